"""SFT step overhead, the speed-up of the latent/token cache, and DiT throughput (MFU) on a GPU.

    .venv/bin/python bench/sft_step.py [--device cpu|cuda] [--steps 30] [--batch-size 16]
        [--root ./data] [--skip-gpu | --gpu-only] [--peak-tflops 989]

Sections 1 and 2 use the demo's SFT setup (the embedded profile: the SftConfig defaults):
the tiny DiT (2 dual- + 2 single-stream blocks, 4 heads of 32, patch 2), clips of 4 frames of
32x32, the pixel codec with factor 2 (12 latent channels on a 4x16x16 grid: 256 video tokens
per sample), the tiny instructor, a batch of 16 video samples, fp32 on a CPU and bf16 autocast
+ gradient checkpointing on a GPU (the loop's "auto" rules). The data is a temporary copy of
the tests' tiny dataset (tests/sft_fixtures.py: write_tiny_dataset), or with --root the
accepted video rows of <root>/qc_dataset/manifest.parquet (e.g. ./data after `make demo`).
The cache is built with the loop's own prepare_cache; with --root it is written once under
<root>/bench/sft_cache/ (keyed by a hash of the manifest) and reused by later runs; delete
that folder to drop it.

1. SFT step overhead. Two kinds of step, interleaved step by step so that load drift on a
   busy machine hits both alike; every step uses the batch plan of step 0 (the same samples,
   noise levels and dropped conditions):
   - bare: the DiT forward + backward + AdamW step + zero_grad on tensors built once from that
     batch (noisy|source|reference latents already stacked, tokens, mask, pooled vector,
     timesteps, velocity target) with a plain MSE loss: the floor of any training loop;
   - full: one iteration of the body of sft.train's loop: plan_step -> read the items from the
     cache (CachedSamples, which keeps items in memory after their first read, as for any
     dataset under its 4096-item memory) -> collate -> noise -> forward_loss (mask-weighted
     flow matching) -> backward -> clip_grad_norm_ -> AdamW + LR schedule -> zero_grad ->
     loss.item().
   Reading the items from storage instead (a dataset larger than that memory) adds what
   section 2 shows for "cache, read from storage" to the data phase. Reported: median and
   fastest ms/step over --steps steps after --warmup warm-up steps, and the ratio to bare
   (goal: full <= 1.15x bare). A breakdown of the full step by phase follows. On CUDA a
   step synchronises only at loss.item() (as the loop does); the breakdown comes from an
   extra pass that synchronises at every phase boundary.

2. Caching speed-up. Time to produce one training batch on the device (the collated Batch,
   noise and noise levels of step 0's plan) from the cache, in memory and read from storage
   (CachedSamples with memory_items=0), versus on the fly: load_pixel_sample for each sample
   of the batch (decode the source and target videos and the mask, cut them to the clip
   geometry), then the cache's own encoder (sft.make_encoder: codec encode of source,
   target and reference, masks to the latent grid, instructor encode of instruction + first
   frame + reference), then collate and noise.
   Reported per batch: median and fastest ms over --data-batches batches after one warm-up
   batch, the on-the-fly phases, and the on-the-fly / cache ratio.

3. GPU throughput and MFU (only when CUDA is available; skipped with a note otherwise). A DiT
   of HunyuanVideo width: hidden d = 3072 (24 heads x 128), mlp_ratio 4, rope_axes_dim
   (16, 56, 56), text_embed_dim 4096 (the pooled vector is the instructor mean, 4096-d, as in
   VIVA), patch 2 (1 in time), 48 input channels (noisy | source | reference, 3 x 16 latent
   channels), 16 out, with 1 dual-stream block, 1 single-stream block and 1 token-refiner
   layer. Batch 1 at real token counts: latent grids (t, h, w) from --gpu-grids (default
   5x60x104, 9x60x104, 13x60x104: 17, 33 and 49 frames of 480x832 through the HunyuanVideo
   VAE) with --text-tokens (256) condition tokens. One step = forward (predict_velocity) +
   MSE loss + backward under torch.autocast(bfloat16), with fp32 master weights (the SFT
   loop's setup) or bf16 weights (--gpu-weights), gradient checkpointing off and/or on
   (--gpu-checkpointing); no optimizer step (its cost does not depend on the tokens).
   Reported: tokens (video + text), ms per forward + backward, tokens/s, TFLOP per step,
   achieved TFLOP/s, MFU = achieved / --peak-tflops (default 989: H100 SXM, dense bf16; the
   H200 has the same compute, only more and faster memory, so the same peak applies) and
   torch.cuda.max_memory_allocated over the timed steps (weights and gradients included).

   FLOPs are counted with torch.utils.flop_counter.FlopCounterMode over one forward + backward
   with checkpointing off, i.e. model FLOPs: the forward that checkpointing recomputes is not
   counted, so both settings are scored on the same work. The analytic count is shown beside
   it as a check (see below for when it is used instead), with N_v = t * (h/2) * (w/2) video
   tokens, N_t text tokens, N = N_v + N_t, r = mlp_ratio:
     each dual- or single-stream block:  2 * (4 + 2r) * d^2 * N + 4 * N^2 * d
       (per token (4 + 2r) d^2 weights: q, k, v, out and the MLP of its stream in a
       dual-stream block; q, k, v, MLP in and the fused output in a single-stream block;
       attention QK^T and PV over the joint sequence, 2 N^2 d each)
     each token-refiner layer:           2 * (4 + 2r) * d^2 * N_t + 4 * N_t^2 * d
     refiner input projection:           2 * 4096 * d * N_t
     patch embedding, output projection: 2 * (48 * 4) * d * N_v + 2 * d * (4 * 16) * N_v
     forward + backward = 3 x forward. AdaLN modulations and the timestep / pooled embeddings
     act on one vector per sample and are left out; the input gradients of the patch embedding
     and the refiner's input projection, which backward skips, are in (a slight over-count).
   Where the two differ by more than 10% (an op the counter does not know, e.g. the CPU's
   flash attention) the analytic count is used, with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import machine, ms, note, sync, table

from viva_pipelines.model.clips import ClipGeometry
from viva_pipelines.model.codecs import load_codec
from viva_pipelines.model.flow_matching import (
    add_noise,
    velocity_from_prediction,
    velocity_target,
)
from viva_pipelines.model.instructor import Instructor
from viva_pipelines.model.transformer import (
    build_transformer,
    editing_input,
    pooled_vector,
    predict_velocity,
)
from viva_pipelines.storage import Storage
from viva_pipelines.train import sft
from viva_pipelines.train.config import SftConfig
from viva_pipelines.train.distributed import DistContext
from viva_pipelines.train.reporting import Reporter
from viva_pipelines.train.sft_data import (
    VIDEO,
    Batch,
    CachedSamples,
    StepPlan,
    collate,
    load_pixel_sample,
    plan_step,
)

REPO = Path(__file__).resolve().parents[1]
MANIFEST = "qc_dataset/manifest.parquet"
BENCH_CACHE = "bench/sft_cache"

#: The DiT of section 3: HunyuanVideo's width, one block of each kind (see the docstring).
HUNYUAN_WIDTH: dict[str, Any] = {
    "in_channels": 48,
    "out_channels": 16,
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "num_layers": 1,
    "num_single_layers": 1,
    "num_refiner_layers": 1,
    "mlp_ratio": 4.0,
    "patch_size": 2,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "guidance_embeds": False,
    "text_embed_dim": 4096,
    "pooled_projection_dim": 4096,
    "rope_theta": 256.0,
    "rope_axes_dim": (16, 56, 56),
}
GPU_GRIDS = "5x60x104,9x60x104,13x60x104"


# -- reporting ------------------------------------------------------------------------------


class Phases:
    """Per-phase wall times of a step: ``start()``, then ``mark(name)`` after each phase.
    Disabled, it costs nothing; on CUDA each mark synchronises first."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device, self.enabled = device, enabled
        self.times: dict[str, list[float]] = {}
        self._last = 0.0

    def start(self) -> None:
        if self.enabled:
            sync(self.device)
            self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        if self.enabled:
            sync(self.device)
            now = time.perf_counter()
            self.times.setdefault(name, []).append(now - self._last)
            self._last = now

    def medians(self, skip: int) -> dict[str, float]:
        """Median per phase, leaving out the first ``skip`` (warm-up) steps."""
        return {name: statistics.median(values[skip:]) for name, values in self.times.items()}


def interleaved(
    variants: dict[str, Callable[[], object]], *, warmup: int, steps: int, device: torch.device
) -> dict[str, list[float]]:
    """Wall seconds per call of each variant, round-robin, warm-up calls left out."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(warmup + steps):
        for name, run in variants.items():
            sync(device)
            started = time.perf_counter()
            run()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


# -- the SFT setup of sections 1 and 2 ------------------------------------------------------------


@dataclass
class Setup:
    storage: Storage
    config: SftConfig
    device: torch.device
    dataset: CachedSamples
    unconditional: torch.Tensor
    pool: np.ndarray  # dataset positions of the training videos
    rows: dict[str, Any]  # sample_id -> manifest row

    @property
    def geometry(self) -> ClipGeometry:
        return sft.geometry_of(self.config)

    def plan(self) -> StepPlan:
        """The global batch plan of step 0, drawn as the loop draws it (videos only)."""
        config = self.config
        return plan_step(
            0,
            seed=config.runtime.seed,
            pools={VIDEO: self.pool},
            video_fraction=1.0,
            batch_size=config.optim.batch_size,
            loss=config.loss,
        )


def tiny_dataset(root: Path) -> Storage:
    """The tests' tiny dataset (4 clips x 2 edits) written under ``root``."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `tests` is a folder of the repository, not installed
    from tests.sft_fixtures import write_tiny_dataset

    storage = Storage(str(root))
    write_tiny_dataset(storage)
    return storage


def prepare(args: argparse.Namespace, device: torch.device, workdir: Path) -> Setup:
    """The dataset, its cache (built by sft.prepare_cache when missing) and the demo config."""
    if args.root:
        root = args.root
        storage = Storage(root)
        if not storage.exists(MANIFEST):
            raise SystemExit(f"{storage.uri(MANIFEST)} not found (run `make demo` first?)")
        cache_prefix = BENCH_CACHE
        # The cache key changes with the manifest, so a rebuilt dataset gets a fresh cache.
        version = "bench-" + hashlib.sha256(storage.read_bytes(MANIFEST)).hexdigest()[:12]
    else:
        root = str(workdir / "root")
        note(f"writing the tests' tiny dataset to {root}")
        storage = tiny_dataset(Path(root))
        cache_prefix, version = "sft_cache", "bench"
    config = SftConfig.from_mapping(
        {
            "output_prefix": "bench/sft_step",
            "data": {
                "storage_root": root,
                "dataset_version": version,
                "cache_prefix": cache_prefix,
                "use_images": False,  # only video batches are timed; no image rows cached
            },
            "model": {"instructor": "tiny"},
            "optim": {"batch_size": args.batch_size},
            "runtime": {"device": str(device)},
        }
    )
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    codec = load_codec(config.model.codec)
    note("preparing the SFT cache (encodes whatever is missing)")
    started = time.perf_counter()
    with Reporter(enabled=False, tracking_uri=None, run_id=None) as report:
        dataset, unconditional, prefix = sft.prepare_cache(storage, config, ctx, codec, report)
    note(f"cache ready in {time.perf_counter() - started:.1f}s: {storage.uri(prefix)}")
    index = dataset.index
    videos = index[index["modality"] == VIDEO]
    train = videos[videos["split"] == "train"]
    pool = (train if not train.empty else videos).index.to_numpy()
    if len(pool) == 0:
        raise SystemExit("no accepted video samples to train on")
    rows = {row.sample_id: row for row in sft.training_rows(storage, config).itertuples()}
    return Setup(storage, config, device, dataset, unconditional, pool, rows)


def cached_batch(setup: Setup, dataset: CachedSamples) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Step 0's batch from the cache, as the loop makes it: items -> collate -> noise, on the
    device. Returns the batch, the noise and the noise levels."""
    plan = setup.plan()
    share = plan.share(0, 1)
    items = [dataset[int(p)] for p in plan.positions[share]]
    batch = collate(
        items, setup.unconditional, plan.drop_instruction[share], plan.drop_source[share]
    )
    noise = torch.randn((len(plan.positions), *batch.target.shape[1:]), generator=plan.generator)
    device = setup.device
    return batch.to(device), noise[share].to(device), plan.sigmas[share].to(device)


def cold(setup: Setup) -> CachedSamples:
    """The same cache with no memory: every item is read and parsed from storage each time."""
    return CachedSamples(setup.storage, setup.dataset.index, memory_items=0)


# -- 1. step overhead ---------------------------------------------------------------------------


def step_overhead(setup: Setup, args: argparse.Namespace) -> None:
    config, device = setup.config, setup.device
    runtime, optim = config.runtime, config.optim
    on_gpu = device.type == "cuda"
    first = setup.dataset[int(setup.pool[0])]
    model = sft.build_model(config, first["source"].shape[0], first["tokens"].shape[-1])
    model = model.to(device)
    checkpointing = runtime.gradient_checkpointing == "on" or (
        runtime.gradient_checkpointing == "auto" and on_gpu
    )
    if checkpointing:
        model.enable_gradient_checkpointing()
    use_bf16 = runtime.mixed_precision == "bf16" or (runtime.mixed_precision == "auto" and on_gpu)

    def autocast() -> contextlib.AbstractContextManager:
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    bare = copy.deepcopy(model)  # same weights, its own optimizer state

    def adamw(module: torch.nn.Module) -> torch.optim.AdamW:
        return torch.optim.AdamW(
            module.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
        )

    optimizer, bare_optimizer = adamw(model), adamw(bare)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, sft.lr_lambda(config))
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    model.train()
    bare.train()

    def full(dataset: CachedSamples, phases: Phases) -> None:
        phases.start()
        batch, noise, sigmas = cached_batch(setup, dataset)  # plan_step -> items -> collate
        phases.mark("data: plan + cache read + collate + noise (+ to device)")
        loss = sft.forward_loss(model, batch, noise, sigmas, config, autocast())
        phases.mark("forward + loss")
        loss.backward()
        phases.mark("backward")
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        phases.mark("clip_grad_norm_")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ctx.mean(loss).item()
        phases.mark("AdamW + LR schedule + zero_grad + loss.item()")

    batch, noise, sigmas = cached_batch(setup, setup.dataset)
    noisy = add_noise(batch.target, noise, sigmas)
    inputs = {
        "hidden_states": editing_input(noisy, batch.source, batch.reference),
        "timestep": sigmas.float() * 1000,
        "encoder_hidden_states": batch.tokens,
        "encoder_attention_mask": batch.token_mask,
        "pooled_projections": pooled_vector(batch.tokens, batch.token_mask, config.model.pooled),
        "guidance": None,
        "return_dict": False,
    }
    target = velocity_target(batch.target, noise)

    def bare_step() -> None:
        with autocast():
            output = bare(**inputs)[0]
        velocity = velocity_from_prediction(
            output, noisy, batch.source, sigmas, config.model.prediction
        )
        loss = F.mse_loss(velocity.float(), target)
        loss.backward()
        bare_optimizer.step()
        bare_optimizer.zero_grad(set_to_none=True)
        loss.item()

    # On a CPU phase marks cost nothing, so the main "full" rows carry them; on CUDA they
    # would synchronise mid-step, so the breakdown gets a pass of its own.
    phases = Phases(device)
    no_phases = Phases(device, enabled=False)
    variants: dict[str, Callable[[], object]] = {
        "bare": bare_step,
        "full": lambda: full(setup.dataset, no_phases if on_gpu else phases),
    }
    if on_gpu:
        variants["phases"] = lambda: full(setup.dataset, phases)
    note(f"1. timing {args.warmup} + {args.steps} steps of each of {len(variants)} variants")
    times = interleaved(variants, warmup=args.warmup, steps=args.steps, device=device)

    parameters = sum(p.numel() for p in model.parameters())
    patch_t, patch = model.config.patch_size_t, model.config.patch_size
    _, channels, t, h, w = batch.target.shape
    video_tokens = (t // patch_t) * (h // patch) * (w // patch)
    print("## 1. SFT step overhead: full training step vs bare DiT forward + backward")
    print()
    print(machine(device))
    print()
    print(
        f"Tiny DiT ({parameters / 1e6:.2f}M parameters), batch {len(batch.target)} video "
        f"samples: latents [{channels}, {t}, {h}, {w}] = {video_tokens} video tokens + "
        f"{batch.tokens.shape[1]} condition tokens per sample (padded); "
        f"{'bf16 autocast' if use_bf16 else 'fp32'}, gradient checkpointing "
        f"{'on' if checkpointing else 'off'}. Median of {args.steps} steps after "
        f"{args.warmup} warm-up, all on the same batch (step 0's plan)."
    )
    print()
    base = statistics.median(times["bare"])
    labels = {
        "bare": "bare: DiT fwd + bwd + AdamW on pre-built tensors",
        "full": "full SFT step (sft.train's loop body), cache in memory",
    }
    rows = []
    for name, label in labels.items():
        median = statistics.median(times[name])
        rows.append([label, ms(median), ms(min(times[name])), f"{median / base:.2f}x"])
    table(["step", "median ms", "fastest ms", "vs bare"], rows)
    ratio = statistics.median(times["full"]) / base
    verdict = "met" if ratio <= 1.15 else "NOT met"
    print(f"Goal: full step (cache in memory) <= 1.15x bare: {verdict} ({ratio:.2f}x).")
    print()
    medians = phases.medians(args.warmup)
    total = sum(medians.values())
    where = " (extra pass, synchronised at each phase boundary)" if on_gpu else ""
    print(f"Full step (cache in memory) by phase{where}:")
    print()
    table(
        ["phase", "median ms", "share"],
        [[name, ms(value), f"{value / total:.0%}"] for name, value in medians.items()],
    )


# -- 2. caching speed-up ------------------------------------------------------------------------


def caching_speedup(setup: Setup, args: argparse.Namespace) -> None:
    config, device = setup.config, setup.device
    codec = load_codec(config.model.codec)
    note("2. loading the instructor for on-the-fly encoding")
    instructor = Instructor(sft.instructor_config(config, device, setup.storage))
    encode = sft.make_encoder(codec, instructor, device)
    geometry = setup.geometry
    index = setup.dataset.index
    phases = Phases(device)

    def on_the_fly() -> tuple[Batch, torch.Tensor, torch.Tensor]:
        phases.start()
        plan = setup.plan()
        share = plan.share(0, 1)
        rows = [setup.rows[index.at[int(p), "sample_id"]] for p in plan.positions[share]]
        samples = [load_pixel_sample(setup.storage, row, geometry) for row in rows]
        phases.mark("load_pixel_sample: decode videos + mask, cut to the clip")
        latents, tokens = encode(samples)
        phases.mark("encode: codec + masks to latents + instructor (make_encoder)")
        items = [
            {**{name: value[i] for name, value in latents.items()}, "tokens": tokens["tokens"][i]}
            for i in range(len(samples))
        ]
        batch = collate(
            items, setup.unconditional, plan.drop_instruction[share], plan.drop_source[share]
        )
        noise = torch.randn(
            (len(plan.positions), *batch.target.shape[1:]), generator=plan.generator
        )
        out = batch.to(device), noise[share].to(device), plan.sigmas[share].to(device)
        phases.mark("collate + noise (+ to device)")
        return out

    cold_dataset = cold(setup)
    variants: dict[str, Callable[[], object]] = {
        "memory": lambda: cached_batch(setup, setup.dataset),
        "storage": lambda: cached_batch(setup, cold_dataset),
        "fly": on_the_fly,
    }
    batches, warmup = args.data_batches, min(args.warmup, 1)
    note(f"2. timing {warmup} + {batches} batches from the cache and on the fly")
    times = interleaved(variants, warmup=warmup, steps=batches, device=device)

    print("## 2. Caching speed-up: one training batch from the cache vs computed on the fly")
    print()
    print(machine(device))
    print()
    print(
        f"Batch of {config.optim.batch_size} video samples ({geometry.frames} frames of "
        f"{geometry.height}x{geometry.width}, {codec!r}, tiny instructor) of step 0's plan, "
        f"ending on the device. Median of {batches} batches after {warmup} warm-up."
    )
    print()
    base = {name: statistics.median(times[name]) for name in variants}
    labels = {
        "memory": "cache, in memory: plan + read + collate + noise",
        "storage": "cache, read from storage each time",
        "fly": "on the fly: pixels + codec + instructor + collate",
    }
    rows = [
        [label, ms(base[name]), ms(min(times[name])), f"{base[name] / base['memory']:.1f}x"]
        for name, label in labels.items()
    ]
    for name, value in phases.medians(warmup).items():
        rows.append([f"- of which {name}", ms(value), "", ""])
    table(["one batch from", "median ms", "fastest ms", "vs cache in memory"], rows)
    print(
        f"Caching speed-up per batch: {base['fly'] / base['memory']:.1f}x with the cache in "
        f"memory, {base['fly'] / base['storage']:.1f}x reading it from storage."
    )
    print()


# -- 3. GPU throughput and MFU --------------------------------------------------------------------


def parse_grids(text: str) -> list[tuple[int, int, int]]:
    grids = []
    for part in text.split(","):
        values = tuple(int(v) for v in part.lower().split("x"))
        if len(values) != 3 or min(values) < 1:
            raise ValueError(f"latent grid {part!r} is not TxHxW (positive integers)")
        grids.append(values)
    return grids


def token_counts(config: dict[str, Any], grid: tuple[int, int, int]) -> int:
    """Video tokens of a latent grid after patchifying."""
    t, h, w = grid
    patch, patch_t = config["patch_size"], config["patch_size_t"]
    if h % patch or w % patch or t % patch_t:
        raise ValueError(f"latent grid {grid} is not divisible by the patch size")
    return (t // patch_t) * (h // patch) * (w // patch)


def analytic_flops(config: dict[str, Any], video_tokens: int, text_tokens: int) -> float:
    """Forward + backward FLOPs of one sample (the formula of the module docstring)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    per_token = (4 + 2 * config["mlp_ratio"]) * d * d
    n = video_tokens + text_tokens
    blocks = config["num_layers"] + config["num_single_layers"]
    forward = blocks * (2 * per_token * n + 4 * n * n * d)
    forward += config["num_refiner_layers"] * (2 * per_token * text_tokens + 4 * text_tokens**2 * d)
    forward += 2 * config["text_embed_dim"] * d * text_tokens
    patch_volume = config["patch_size_t"] * config["patch_size"] ** 2
    forward += 2 * config["in_channels"] * patch_volume * d * video_tokens
    forward += 2 * d * patch_volume * config["out_channels"] * video_tokens
    return 3 * forward


@dataclass
class DitResult:
    seconds: list[float]
    peak_bytes: int


def dit_inputs(
    config: dict[str, Any], grid: tuple[int, int, int], text_tokens: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Random fp32 inputs for predict_velocity, batch 1, and a velocity target."""
    generator = torch.Generator(device=device).manual_seed(0)
    channels = config["out_channels"]
    t, h, w = grid

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    tokens = randn(1, text_tokens, config["text_embed_dim"])
    return {
        "noisy": randn(1, channels, t, h, w),
        "sigma": torch.full((1,), 0.5, device=device),
        "source": randn(1, channels, t, h, w),
        "reference": randn(1, channels, 1, h, w),
        "tokens": tokens,
        "attention_mask": torch.ones(1, text_tokens, dtype=torch.long, device=device),
        "pooled": tokens.mean(1),
        "target": randn(1, channels, t, h, w),
    }


def dit_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Forward + loss + backward under bf16 autocast; gradients dropped (no optimizer)."""
    device = inputs["noisy"].device
    with torch.autocast(device.type, dtype=torch.bfloat16):
        velocity = predict_velocity(
            model,
            inputs["noisy"],
            inputs["sigma"],
            inputs["source"],
            inputs["reference"],
            inputs["tokens"],
            inputs["attention_mask"],
            inputs["pooled"],
        )
    F.mse_loss(velocity.float(), inputs["target"]).backward()
    model.zero_grad(set_to_none=True)


def counted_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """FlopCounterMode's count of one step with checkpointing off (model FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    checkpointing = model.gradient_checkpointing
    model.disable_gradient_checkpointing()
    try:
        with FlopCounterMode(display=False) as counter:
            dit_step(model, inputs)
    finally:
        if checkpointing:
            model.enable_gradient_checkpointing()
    return float(counter.get_total_flops())


def time_dit(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    checkpointing: bool,
    steps: int,
    warmup: int,
) -> DitResult:
    device = inputs["noisy"].device
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    for _ in range(warmup):
        dit_step(model, inputs)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps):
        sync(device)
        started = time.perf_counter()
        dit_step(model, inputs)
        sync(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return DitResult(seconds, peak)


def build_dit(config: dict[str, Any], device: torch.device, weights: str) -> torch.nn.Module:
    model = build_transformer(config, seed=0).to(device)
    if weights == "bf16":
        model = model.to(torch.bfloat16)
    return model.train()


def dit_throughput(
    device: torch.device,
    config: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    """Section 3's measurements and table (runs anywhere; only called with CUDA by main)."""
    note(f"3. building the HunyuanVideo-width DiT ({args.gpu_weights} weights)")
    model = build_dit(config, device, args.gpu_weights)
    parameters = sum(p.numel() for p in model.parameters())
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.gpu_checkpointing]
    rows = []
    counter_notes = []
    for grid in parse_grids(args.gpu_grids):
        video_tokens = token_counts(config, grid)
        tokens = video_tokens + args.text_tokens
        analytic = analytic_flops(config, video_tokens, args.text_tokens)
        inputs = dit_inputs(config, grid, args.text_tokens, device)
        try:
            flops, source = counted_flops(model, inputs), "counted"
        except Exception as exc:  # the counter is a check, not a requirement (OOM included)
            flops, source = analytic, "analytic"
            reason = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else repr(exc)
            counter_notes.append(
                f"{'x'.join(map(str, grid))}: FlopCounterMode failed ({reason}); "
                "the analytic FLOPs are used for TFLOP/s and MFU."
            )
            model.zero_grad(set_to_none=True)
        if source == "counted" and abs(flops - analytic) > 0.1 * analytic:
            counter_notes.append(
                f"{'x'.join(map(str, grid))}: FlopCounterMode counts {flops / 1e12:.3g} TFLOP, "
                f"the formula {analytic / 1e12:.3g}: an op is likely uncounted (e.g. an "
                "attention kernel the counter does not know); the analytic FLOPs are used."
            )
            flops, source = analytic, "analytic"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for checkpointing in modes:
            label = [f"{grid[0]}x{grid[1]}x{grid[2]}", f"{video_tokens} + {args.text_tokens}"]
            label.append("on" if checkpointing else "off")
            note(f"3. timing grid {label[0]}, checkpointing {label[2]}")
            result = None
            with contextlib.suppress(torch.OutOfMemoryError):
                result = time_dit(
                    model, inputs, checkpointing=checkpointing, steps=args.steps, warmup=args.warmup
                )
            if result is None:  # out of memory: the row says so, the next one starts clean
                rows.append([*label, "OOM", "", "", "", "", "", ""])
                model.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            seconds = statistics.median(result.seconds)
            achieved = flops / seconds / 1e12
            rows.append(
                [
                    *label,
                    ms(seconds),
                    f"{tokens / seconds:,.0f}",
                    f"{flops / 1e12:.2f} ({source})",
                    f"{analytic / 1e12:.2f}",
                    f"{achieved:.1f}",
                    f"{achieved / args.peak_tflops:.1%}",
                    f"{result.peak_bytes / 2**30:.1f}",
                ]
            )
        del inputs
    print("## 3. DiT throughput and MFU at HunyuanVideo width")
    print()
    print(machine(device))
    print()
    weights = (
        "fp32 master weights" if args.gpu_weights == "fp32" else "bf16 weights (no fp32 master)"
    )
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    patch = f"{config['patch_size_t']}x{config['patch_size']}x{config['patch_size']}"
    print(
        f"d = {heads * head_dim} ({heads} heads x {head_dim}), mlp_ratio {config['mlp_ratio']:g}, "
        f"{config['num_layers']} dual-stream + {config['num_single_layers']} single-stream "
        f"block(s), {config['num_refiner_layers']} refiner layer(s), patch {patch}, "
        f"{config['in_channels']} -> {config['out_channels']} channels, {args.text_tokens} text "
        f"tokens of {config['text_embed_dim']}-d; {parameters / 1e6:.0f}M parameters; "
        f"{weights} under torch.autocast(bfloat16); "
        f"batch 1; forward + MSE + backward, no optimizer step. Median of {args.steps} steps "
        f"after {args.warmup} warm-up. TFLOP per step: model FLOPs of forward + backward "
        f"(torch.utils.flop_counter.FlopCounterMode, checkpointing off; analytic count beside "
        f"it); MFU against {args.peak_tflops:g} TFLOP/s (--peak-tflops; 989 = H100 SXM dense "
        f"bf16, same for H200). Peak memory: torch.cuda.max_memory_allocated."
    )
    print()
    table(
        [
            "latent grid (t x h x w)",
            "tokens (video + text)",
            "grad ckpt",
            "ms / fwd+bwd",
            "tokens/s",
            "TFLOP / step",
            "TFLOP analytic",
            "TFLOP/s",
            "MFU",
            "peak mem GiB",
        ],
        rows,
        right=3,
    )
    for line in counter_notes:
        print(line)
    if counter_notes:
        print()


def gpu_section(args: argparse.Namespace) -> None:
    title = "## 3. DiT throughput and MFU at HunyuanVideo width"
    if args.skip_gpu:
        print(f"{title}: skipped (--skip-gpu).")
        print()
        return
    if not torch.cuda.is_available():
        why = (
            f"this torch build ({torch.__version__}) has no CUDA support"
            if torch.version.cuda is None
            else f"no CUDA device is visible (torch {torch.__version__}, CUDA {torch.version.cuda})"
        )
        print(f"{title}: skipped, {why}.")
        print()
        return
    dit_throughput(torch.device("cuda"), HUNYUAN_WIDTH, args)


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="sections 1 and 2: cpu or cuda[:N]")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--data-batches", type=int, default=10, help="section 2: timed batches per source"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="sections 1 and 2")
    parser.add_argument(
        "--root",
        help="storage root with qc_dataset/manifest.parquet (default: a temporary tiny dataset)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-gpu", action="store_true", help="leave out section 3")
    parser.add_argument("--gpu-only", action="store_true", help="only section 3")
    parser.add_argument(
        "--gpu-grids",
        default=GPU_GRIDS,
        help=f"section 3: latent grids TxHxW, comma-separated (default {GPU_GRIDS})",
    )
    parser.add_argument("--text-tokens", type=int, default=256, help="section 3")
    parser.add_argument(
        "--gpu-weights",
        choices=("fp32", "bf16"),
        default="fp32",
        help="section 3: fp32 master weights (as the SFT loop) or bf16 weights",
    )
    parser.add_argument(
        "--gpu-checkpointing",
        choices=("off", "on", "both"),
        default="both",
        help="section 3: gradient checkpointing",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="section 3: peak dense bf16 TFLOP/s for MFU (989: H100 SXM; H200 the same)",
    )
    args = parser.parse_args()
    if args.skip_gpu and args.gpu_only:
        parser.error("--skip-gpu and --gpu-only leave nothing to run")
    if min(args.steps, args.data_batches) < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps, --data-batches and --batch-size must be positive")
    if args.text_tokens < 1:
        parser.error("--text-tokens must be positive")
    try:
        for grid in parse_grids(args.gpu_grids):
            token_counts(HUNYUAN_WIDTH, grid)
    except ValueError as exc:
        parser.error(f"--gpu-grids: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.gpu_only:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available")
        with tempfile.TemporaryDirectory(prefix="viva-bench-sft-") as workdir:
            setup = prepare(args, device, Path(workdir))
            step_overhead(setup, args)
            caching_speedup(setup, args)
    gpu_section(args)


if __name__ == "__main__":
    main()
