"""Per-GPU memory and FLOPs of the training steps of a profile, before any GPU is rented.

The editing DiT is built on the ``meta`` device from its config (shapes only: no weights, no
memory, a 13B model in a second), and one forward and backward pass runs at the profile's
token count (on models of two or three blocks, extended to the whole stack: :func:`stack_pass`).
Autograd reports every tensor it keeps for the backward pass (``saved_tensors_hooks``: the
activations, counted once per storage, parameters left out) and ``FlopCounterMode`` counts
the FLOPs. Attention is accounted as the fused kernel GPUs run (flash / memory-efficient:
output and log-sum-exp kept, ``O(L)`` memory, ``4·L²·d`` FLOPs per head forward, twice that
backward) rather than the ``O(L²)`` probabilities a plain ``meta`` run would keep.

What a GPU holds during a step: the weights, their gradients and the optimizer's state (fp32:
AdamW's two moments, Muon's one momentum for the blocks' matrices; sharded over the ranks under
FSDP, replicated under DDP; only the trainable ones get gradients and state), and one
micro-batch's activations (with gradient checkpointing: the blocks' inputs plus one block's
activations, recomputed in the backward pass). Checked
against the resident memory a step adds on a CPU (``tests/test_sizing.py``: within 15 %). The VLM
instructor and the VAE are not there: their outputs are cached before training
(:mod:`viva_pipelines.train.sft_data`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from viva_pipelines.config.schema import Settings
from viva_pipelines.model.channels import CONDITION_STREAMS
from viva_pipelines.train.config import LoraOptions
from viva_pipelines.train.optimizers import state_floats

GIB = 2**30
#: HunyuanVideo-T2V-13B's transformer (diffusers' ``HunyuanVideoTransformer3DModel`` defaults,
#: which are that checkpoint's config) for when ``models.transformer`` is not a local folder.
HUNYUAN_VIDEO_13B: dict[str, Any] = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128,
    "num_layers": 20, "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0,
    "patch_size": 2, "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True,
    "text_embed_dim": 4096, "pooled_projection_dim": 768, "rope_theta": 256.0,
    "rope_axes_dim": (16, 56, 56),
}  # fmt: skip
#: Hidden size of the demo's tiny instructor (its tokens' width).
TINY_INSTRUCTOR_WIDTH = 64
#: Text tokens of an instruction with its first frame through LLaVA (576 image tokens, the
#: prompt template and the instruction); the demo's tiny instructor reads 16 + ~40.
INSTRUCTOR_TOKENS = {"tiny": 64, "pretrained": 768}


@dataclass(frozen=True)
class StepPlan:
    """One training step of one process: bytes per GPU, FLOPs of the whole step."""

    name: str
    parameters: int
    trainable: int
    ranks: int
    sharded: bool
    micro_batch: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    activations_checkpointed: int
    flops: float

    def peak(self, checkpointing: bool) -> int:
        states = self.weights + self.gradients + self.optimizer
        return states + (self.activations_checkpointed if checkpointing else self.activations)


@dataclass(frozen=True)
class PassCost:
    """What one forward + backward pass of a micro-batch keeps and computes."""

    saved_bytes: int
    forward_flops: float
    backward_flops: float


class _FusedAttention(torch.autograd.Function):
    """Stands in for ``scaled_dot_product_attention`` on ``meta``: keeps what a fused kernel
    keeps (q, k, v, output, log-sum-exp) and counts its FLOPs."""

    flops: ClassVar[list[float]] = []

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v, torch.empty_like(q), q.new_empty(q.shape[:-1]))
        _FusedAttention.flops.append(4.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1])
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *_ = ctx.saved_tensors
        _FusedAttention.flops.append(8.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1])
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
    return _FusedAttention.apply(query, key, value)


@contextlib.contextmanager
def _fused_attention() -> Iterator[list[float]]:
    original, F.scaled_dot_product_attention = F.scaled_dot_product_attention, _fused_sdpa
    _FusedAttention.flops = []
    try:
        yield _FusedAttention.flops
    finally:
        F.scaled_dot_product_attention = original


def measure_pass(
    build: Callable[[], torch.nn.Module],
    latent: tuple[int, int, int, int],
    text_tokens: int,
    batch: int,
    *,
    dtype: torch.dtype = torch.float32,
    checkpointing: bool = False,
    device: str = "meta",
) -> PassCost:
    """Run ``build()``'s DiT forward and backward once on ``batch`` samples of ``latent``
    ``(C, t, h, w)`` with ``text_tokens`` condition tokens, on ``device`` (``meta``: shapes
    only, attention as a fused kernel; a real device: what that device runs)."""
    with torch.device(device), default_dtype(dtype):
        model = build()
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    inputs = step_inputs(model.config, latent, text_tokens, batch, device=device, dtype=dtype)
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    attention = _fused_attention() if device == "meta" else contextlib.nullcontext([])
    forward, backward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with attention as attention_flops, torch.autograd.graph.saved_tensors_hooks(keep, _same):
        with forward:
            output = model(**inputs, return_dict=False)[0]
        forward_attention = sum(attention_flops)
        with backward:
            output.float().square().mean().backward()
        backward_attention = sum(attention_flops) - forward_attention
    return PassCost(
        sum(saved.values()),
        forward.get_total_flops() + forward_attention,
        backward.get_total_flops() + backward_attention,
    )


def stack_pass(
    config: dict[str, Any],
    latent: tuple[int, int, int, int],
    text_tokens: int,
    batch: int,
    *,
    lora: LoraOptions | None = None,
    dtype: torch.dtype = torch.float32,
    checkpointing: bool = False,
) -> PassCost:
    """:func:`measure_pass` of the DiT of ``config`` (with ``lora``), from passes of models
    with at most two blocks of each kind. The blocks of a kind are identical, so what a pass
    keeps and computes is affine in their counts: measured at one block of each kind and with
    one more of each, it extends exactly to any count (``tests/test_sizing.py`` pins it
    against the whole model's pass). A pass of HunyuanVideo-13B's 60 blocks on ``meta`` costs
    about 9 s of Python dispatch on 2 CPU cores; three passes of two or three blocks, about 4 s."""
    counts = {kind: config[kind] for kind in ("num_layers", "num_single_layers")}
    base = {kind: min(1, count) for kind, count in counts.items()}

    def cost(blocks: dict[str, int]) -> PassCost:
        build = dit_builder({**config, **blocks}, lora)
        return measure_pass(
            build, latent, text_tokens, batch, dtype=dtype, checkpointing=checkpointing
        )

    origin = cost(base)
    saved, forward, backward = origin.saved_bytes, origin.forward_flops, origin.backward_flops
    for kind, count in counts.items():
        if count > base[kind]:
            grown = cost({**base, kind: base[kind] + 1})
            extra = count - base[kind]
            saved += extra * (grown.saved_bytes - origin.saved_bytes)
            forward += extra * (grown.forward_flops - origin.forward_flops)
            backward += extra * (grown.backward_flops - origin.backward_flops)
    return PassCost(saved, forward, backward)


def step_inputs(
    config: Any,
    latent: tuple[int, int, int, int],
    text_tokens: int,
    batch: int,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Random keyword inputs of the DiT of ``config`` (its diffusers config) for ``batch``
    clips of ``latent`` ``(C, t, h, w)`` and ``text_tokens`` condition tokens."""
    channels, frames, height, width = latent
    with torch.device(device):
        inputs = {
            "hidden_states": torch.randn(
                batch, CONDITION_STREAMS * channels, frames, height, width, dtype=dtype
            ),
            "timestep": torch.full((batch,), 500.0),
            "encoder_hidden_states": torch.randn(
                batch, text_tokens, config["text_embed_dim"], dtype=dtype
            ),
            "encoder_attention_mask": torch.ones(batch, text_tokens, dtype=torch.bool),
            "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], dtype=dtype),
        }
        if config["guidance_embeds"]:
            inputs["guidance"] = torch.full((batch,), 1000.0)
    return inputs


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def checkpointed_activations(full: PassCost, checkpointed: PassCost, blocks: int) -> int:
    """Activation memory at the peak of a checkpointed pass: what it keeps (the blocks'
    inputs) plus one block's activations, rebuilt in the backward pass (the average block's
    share of what the unchecked pass keeps beyond that)."""
    return checkpointed.saved_bytes + (full.saved_bytes - checkpointed.saved_bytes) // blocks


def block_count(config: dict[str, Any]) -> int:
    return config["num_layers"] + config["num_single_layers"]


def latent_shape(settings: Settings) -> tuple[int, int, int, int]:
    """``(C, t, h, w)`` of a training clip in the codec's latent space."""
    data, codec = settings.sft.data, settings.sft.model.codec
    if codec.get("kind") == "hunyuan_vae":
        return 16, (data.frames - 1) // 4 + 1, data.height // 8, data.width // 8
    factor = int(codec.get("factor", 1))
    return 3 * factor**2, data.frames, data.height // factor, data.width // factor


def dit_config(settings: Settings) -> dict[str, Any]:
    """The editing DiT's diffusers config: the local checkpoint's (widened to the editing
    inputs), HunyuanVideo-13B's for a hub id, or the demo's from-scratch one."""
    model = settings.sft.model
    channels = latent_shape(settings)[0]
    if settings.models.transformer is None:
        from viva_pipelines.train.sft import scratch_config

        return scratch_config(model, channels, TINY_INSTRUCTOR_WIDTH)
    folder = Path(settings.models.transformer, model.transformer_subfolder or "")
    config = dict(HUNYUAN_VIDEO_13B)
    if (folder / "config.json").is_file():
        stored = json.loads((folder / "config.json").read_text())
        config |= {k: v for k, v in stored.items() if k in HUNYUAN_VIDEO_13B}
    config["in_channels"] = CONDITION_STREAMS * config["out_channels"]
    # The pooled vector comes from the instructor, as wide as the tokens it conditions on
    # (train.sft.build_model re-makes that projection; train.preflight checks the widths).
    config["pooled_projection_dim"] = config["text_embed_dim"]
    return config


def dit_builder(
    config: dict[str, Any], lora: LoraOptions | None = None
) -> Callable[[], torch.nn.Module]:
    """Builds the DiT of ``config`` (with Edit-GRPO's LoRA on it, frozen, when ``lora``)."""
    from diffusers import HunyuanVideoTransformer3DModel

    def build() -> torch.nn.Module:
        model = HunyuanVideoTransformer3DModel(**config)
        if lora is not None:
            from viva_pipelines.train.grpo import DEFAULT_LORA_TARGETS, add_lora

            targets = lora.targets or DEFAULT_LORA_TARGETS
            add_lora(model, rank=lora.rank, alpha=lora.alpha, targets=targets)
        return model

    return build


def parameter_counts(build: Callable[[], torch.nn.Module]) -> tuple[int, int]:
    """(all, trainable) parameters of what ``build`` makes."""
    with torch.device("meta"):
        model = build()
    counts = [(p.numel(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, _ in counts), sum(n for n, trains in counts if trains)


def _text_tokens(settings: Settings) -> int:
    return INSTRUCTOR_TOKENS["tiny" if settings.models.instructor is None else "pretrained"]


def plan_sft(settings: Settings) -> StepPlan:
    """One SFT optimizer step on each of ``sft.nproc_per_node`` GPUs."""
    sft = settings.sft
    ranks, accumulation = sft.nproc_per_node, sft.optim.grad_accumulation
    micro = sft.optim.batch_size // (ranks * accumulation)
    config = dit_config(settings)
    dtype = torch.bfloat16 if sft.runtime.mixed_precision == "bf16" else torch.float32
    latent, tokens = latent_shape(settings), _text_tokens(settings)
    full = stack_pass(config, latent, tokens, micro, dtype=dtype)
    checkpointed = stack_pass(config, latent, tokens, micro, dtype=dtype, checkpointing=True)
    with torch.device("meta"):
        model = dit_builder(config)()  # built once: its size and the optimizer's state
    parameters, _ = parameter_counts(lambda: model)
    state = state_floats(model.named_parameters(), sft.optim.optimizer)
    shards = ranks if sft.runtime.parallel == "fsdp" else 1
    per_gpu = math.ceil(parameters / shards)
    passes = ranks * accumulation
    return StepPlan(
        name="SFT step",
        parameters=parameters,
        trainable=parameters,
        ranks=ranks,
        sharded=shards > 1,
        micro_batch=micro,
        weights=4 * per_gpu,
        gradients=4 * per_gpu,
        optimizer=4 * math.ceil(state / shards),
        activations=full.saved_bytes,
        activations_checkpointed=checkpointed_activations(full, checkpointed, block_count(config)),
        flops=passes * (full.forward_flops + full.backward_flops),
    )


def plan_grpo(settings: Settings) -> StepPlan:
    """One Edit-GRPO iteration on one GPU: rollouts of ``groups_per_iteration`` groups (no
    activations kept), then updates of the LoRA on the trained steps, batch by batch. The
    frozen DiT stays in bf16 under mixed precision; activations are those of the frozen DiT
    with its LoRA (frozen weights keep no inputs of their own). The reward models and the VAE
    that decodes the rollouts for them are not counted."""
    grpo = settings.grpo
    config = dit_config(settings)
    dtype = torch.bfloat16 if grpo.runtime.mixed_precision == "bf16" else torch.float32
    candidates = grpo.optim.groups_per_iteration * grpo.sampling.group_size
    latent, tokens = latent_shape(settings), _text_tokens(settings)
    lora = grpo.lora
    full = stack_pass(config, latent, tokens, candidates, lora=lora, dtype=dtype)
    checkpointed = stack_pass(
        config, latent, tokens, candidates, lora=lora, dtype=dtype, checkpointing=True
    )
    parameters, trainable = parameter_counts(dit_builder(config, lora))
    guided = 2 if grpo.sampling.guidance_scale != 1 else 1
    rollout = grpo.sampling.num_steps * guided * full.forward_flops
    update = grpo.sampling.train_steps * (full.forward_flops + full.backward_flops)
    return StepPlan(
        name="Edit-GRPO iteration",
        parameters=parameters,
        trainable=trainable,
        ranks=grpo.nproc_per_node,
        sharded=False,
        micro_batch=candidates,
        weights=(2 if dtype == torch.bfloat16 else 4) * parameters + 4 * trainable,
        gradients=4 * trainable,
        optimizer=8 * trainable,
        activations=full.saved_bytes,
        activations_checkpointed=checkpointed_activations(full, checkpointed, block_count(config)),
        flops=grpo.optim.accumulate * (rollout + update),
    )


#: Dense bf16 peak of an H100 SXM, TFLOP/s; the MFU a well-tuned DiT step reaches on it.
H100_BF16_TFLOPS, ASSUMED_MFU = 989.0, 0.4


def plan_table(
    plans: list[StepPlan], gpu_gib: float = 80.0, gpu_tflops: float = H100_BF16_TFLOPS
) -> str:
    """The plans as a Markdown table: per-GPU memory, whether the checkpointed peak fits a
    ``gpu_gib`` GPU (with 10 % headroom), FLOPs of the step and its time at
    :data:`ASSUMED_MFU` of ``gpu_tflops`` per GPU."""
    rows = [
        "| step | params (trainable) | ranks | micro-batch | weights | grads | optimizer | "
        "activations | act. checkpointed | peak (ckpt) | fits | PFLOP/step | s/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in plans:
        peak = p.peak(checkpointing=True) / GIB
        seconds = p.flops / (p.ranks * gpu_tflops * 1e12 * ASSUMED_MFU)
        rows.append(
            f"| {p.name} | {p.parameters / 1e9:.3g} B ({p.trainable / 1e6:.3g} M) | {p.ranks}"
            f"{' (FSDP)' if p.sharded else ''} | {p.micro_batch} | {p.weights / GIB:.2f} GiB | "
            f"{p.gradients / GIB:.2f} GiB | {p.optimizer / GIB:.2f} GiB | "
            f"{p.activations / GIB:.2f} GiB | {p.activations_checkpointed / GIB:.2f} GiB | "
            f"{peak:.2f} GiB | {'yes' if peak < 0.9 * gpu_gib else 'NO'} ({gpu_gib:g} GiB) | "
            f"{p.flops / 1e15:.3g} | {seconds:.3g} |"
        )
    return "\n".join(rows)
