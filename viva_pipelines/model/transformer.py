"""The editing DiT: ``diffusers.HunyuanVideoTransformer3DModel`` with context-aware noise tokens.

VIVA conditions the video DiT in two ways (docs/method.md):

- the VLM instructor's hidden states go through the model's trainable token refiner
  (``context_embedder``) as the text tokens, with a pooled vector beside them;
- the source video latents and the reference image latent (repeated over latent frames, zeros
  when there is none) are concatenated with the noisy latents on the channel axis, so the patch
  embedding sees ``3 * C`` input channels and the model still predicts ``C``.

A pretrained text-to-video checkpoint is converted with :func:`widen_patch_embedding`: the new
input channels start at zero, so at step 0 the editing model is exactly the base model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
)
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAdaNorm

from viva_pipelines.model.channels import CONDITION_STREAMS, POSITION_CHANNELS, reads_positions
from viva_pipelines.model.flow_matching import PLAIN_GATE, GateReading, velocity_from_prediction

#: The adaptive norms whose ``linear`` turns the conditioning vector into modulations.
MODULATED_NORMS = (
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    AdaLayerNormContinuous,
    HunyuanVideoAdaNorm,
)

#: Where the pooled vector beside the tokens comes from (HunyuanVideo: CLIP-L text, 768-d).
POOLED_SOURCES = ("instructor_last", "instructor_mean", "none")


def tiny_transformer_config(
    latent_channels: int,
    text_embed_dim: int,
    *,
    pooled_dim: int | None = None,
    heads: int = 4,
    head_dim: int = 32,
    dual_layers: int = 2,
    single_layers: int = 2,
    out_channels: int | None = None,
    position_channels: bool = False,
) -> dict[str, Any]:
    """A small HunyuanVideo config trained from scratch, in minutes on a CPU; SFT sizes it from
    ``sft.model.scratch`` (the demo's: 2 heads of 32, 0.56 M parameters; these keyword
    defaults, 4 heads, are ~2 M). Patch 2,
    no guidance embedding (VIVA uses real classifier-free guidance, not a distilled guidance
    input). The rotary axes split ``head_dim`` as HunyuanVideo does (time a quarter, then
    height and width equally). ``out_channels``: default ``latent_channels`` (see
    :func:`~viva_pipelines.model.flow_matching.output_channels`). ``position_channels``: the
    input also reads :data:`POSITION_CHANNELS` coordinate channels (:func:`editing_input`)."""
    if head_dim % 8:
        raise ValueError(f"head_dim must be a multiple of 8 for the rotary axes, got {head_dim}")
    time_axis = head_dim // 4
    return {
        "in_channels": CONDITION_STREAMS * latent_channels + POSITION_CHANNELS * position_channels,
        "out_channels": out_channels or latent_channels,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "num_layers": dual_layers,
        "num_single_layers": single_layers,
        "num_refiner_layers": 1,
        "mlp_ratio": 4.0,
        "patch_size": 2,
        "patch_size_t": 1,
        "qk_norm": "rms_norm",
        "guidance_embeds": False,
        "text_embed_dim": text_embed_dim,
        "pooled_projection_dim": pooled_dim or text_embed_dim,
        "rope_theta": 256.0,
        "rope_axes_dim": (time_axis, (head_dim - time_axis) // 2, (head_dim - time_axis) // 2),
    }


#: How a DiT trained from scratch starts (:func:`build_transformer`).
SCRATCH_INITS = ("adaln_zero", "default")


def build_transformer(
    config: Mapping[str, Any], *, seed: int | None = None, init: str = "default"
) -> HunyuanVideoTransformer3DModel:
    """A freshly initialised editing DiT from a diffusers config dict (seeded when asked).

    ``init``: ``adaln_zero`` (DiT's adaLN-Zero, see :func:`zero_modulations`) or ``default``
    (PyTorch's layer initialisation, which is what diffusers builds)."""
    if init not in SCRATCH_INITS:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(SCRATCH_INITS)}")
    if seed is not None:
        torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(**config)
    check_editing_channels(model)
    if init == "adaln_zero":
        zero_modulations(model)
    return model


@torch.no_grad()
def zero_modulations(model: HunyuanVideoTransformer3DModel) -> HunyuanVideoTransformer3DModel:
    """DiT's adaLN-Zero initialisation, in place: every adaptive norm's modulation (shift,
    scale and residual gate, from the timestep and pooled vector) and the output layer start
    at zero.

    Every block then starts as the identity and the model's output as zero, so what reaches
    the output layer at first is the patch embedding of the noisy, source and reference
    latents themselves: copying the source where nothing changes is a linear map to learn,
    not a path through random blocks. DiT found this initialisation trains diffusion
    transformers from scratch markedly faster than others; pretrained checkpoints are loaded,
    never re-initialised."""
    for module in model.modules():
        linear = getattr(module, "linear", None)
        if isinstance(module, MODULATED_NORMS) and isinstance(linear, torch.nn.Linear):
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
    model.proj_out.weight.zero_()
    model.proj_out.bias.zero_()
    return model


def check_editing_channels(model: HunyuanVideoTransformer3DModel) -> None:
    """An editing DiT reads noisy + source + reference latents (and perhaps the coordinate
    channels) and predicts the noisy ones (plus, for a gated output, one edit-gate channel)."""
    latent, extra = divmod(model.config.in_channels, CONDITION_STREAMS)
    if extra not in (0, POSITION_CHANNELS) or model.config.out_channels not in (latent, latent + 1):
        expected = CONDITION_STREAMS * model.config.out_channels
        raise ValueError(
            f"the editing transformer needs in_channels = {CONDITION_STREAMS} x out_channels "
            f"= {expected} (noisy, source, reference latents; + {POSITION_CHANNELS} with position "
            f"channels), got {model.config.in_channels}; "
            "convert a text-to-video checkpoint with widen_patch_embedding()"
        )


@torch.no_grad()
def widen_patch_embedding(
    model: HunyuanVideoTransformer3DModel, extra_channels: int
) -> HunyuanVideoTransformer3DModel:
    """Give the patch embedding ``extra_channels`` more input channels, appended after the
    existing ones and zero-initialised (the InstructPix2Pix trick), in place.

    The output on the same noisy input is unchanged whatever the new channels hold, so a
    text-to-video checkpoint becomes an editing model that starts as the base model.
    """
    if extra_channels < 1:
        raise ValueError(f"extra_channels must be >= 1, got {extra_channels}")
    old = model.x_embedder.proj
    new = torch.nn.Conv3d(
        old.in_channels + extra_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    new.weight.zero_()
    new.weight[:, : old.in_channels] = old.weight
    if old.bias is not None:
        new.bias.copy_(old.bias)
    model.x_embedder.proj = new
    model.register_to_config(in_channels=new.in_channels)
    return model


@torch.no_grad()
def reproject_pooled_input(
    model: HunyuanVideoTransformer3DModel, width: int
) -> HunyuanVideoTransformer3DModel:
    """Make the pooled vector's input projection read ``width``-wide vectors, in place.

    HunyuanVideo's pooled vector is CLIP-L's 768-d text embedding; VIVA's comes from the
    instructor (:func:`pooled_vector`), as wide as its hidden states. The projection's weights
    start at zero and its bias is kept, so step 0 sees the constant the base model saw for a
    zero vector, and training learns what the instructor's vector adds. A departure from the
    base model's conditioning (documented in docs/method.md), not a change of the method's
    tokens."""
    old = model.time_text_embed.text_embedder.linear_1
    new = torch.nn.Linear(
        width,
        old.out_features,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    new.weight.zero_()
    if old.bias is not None:
        new.bias.copy_(old.bias)
    model.time_text_embed.text_embedder.linear_1 = new
    model.register_to_config(pooled_projection_dim=width)
    return model


def editing_input(
    noisy: torch.Tensor,
    source: torch.Tensor,
    reference: torch.Tensor | None = None,
    *,
    positions: bool = False,
) -> torch.Tensor:
    """Channel-concatenate the context (docs/method.md): ``[B, 3C, t, h, w]``.

    ``noisy``, ``source``: ``[B, C, t, h, w]``; ``reference``: ``[B, C, 1, h, w]`` (one image
    latent, repeated over the ``t`` latent frames) or ``None`` (zeros: no reference).
    ``positions``: append :data:`POSITION_CHANNELS` more, each cell's row and column scaled to
    [-1, 1] (``[B, 3C + 2, t, h, w]``). Rotary embeddings give attention only *relative*
    places, and a codec without convolutions leaks none at the borders, so without them "at
    the bottom left" can only be guessed from the picture (docs/benchmark.md). A departure from
    VIVA's input, off by default.
    """
    if source.shape != noisy.shape:
        raise ValueError(f"source {tuple(source.shape)} != noisy {tuple(noisy.shape)}")
    if reference is None:
        reference = torch.zeros_like(noisy)
    else:
        reference = reference.to(noisy.dtype).expand(-1, -1, noisy.shape[2], -1, -1)
    streams = [noisy, source.to(noisy.dtype), reference]
    if positions:
        batch, _, frames, height, width = noisy.shape
        rows = torch.linspace(-1, 1, height, device=noisy.device, dtype=noisy.dtype)
        columns = torch.linspace(-1, 1, width, device=noisy.device, dtype=noisy.dtype)
        grid = torch.stack(torch.meshgrid(rows, columns, indexing="ij"))
        streams.append(grid[None, :, None].expand(batch, -1, frames, -1, -1))
    return torch.cat(streams, dim=1)


def pooled_vector(tokens: torch.Tensor, attention_mask: torch.Tensor, source: str) -> torch.Tensor:
    """The pooled condition vector ``[B, D]`` from condition tokens ``[B, L, D]`` (right-padded,
    ``attention_mask`` ``[B, L]``); a stand-in for HunyuanVideo's CLIP-L text vector that needs
    no second text model. It drives the DiT's adaptive norms in every block, so it should
    carry the edit.

    ``instructor_last``: the state of the last real token, which in a causal language model
    has read the whole prompt (images and instruction) and is where its answer starts;
    ``instructor_mean``: the mean over real tokens (dominated by the image and template tokens
    that every prompt shares); ``none``: zeros, leaving the tokens as the only condition.
    """
    if source == "none":
        return tokens.new_zeros(tokens.shape[0], tokens.shape[-1])
    if source == "instructor_last":
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
    if source != "instructor_mean":
        raise ValueError(f"unknown pooled source {source!r}; known: {', '.join(POOLED_SOURCES)}")
    weights = attention_mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)


def predict_output(
    transformer: torch.nn.Module,
    noisy: torch.Tensor,
    sigma: torch.Tensor,
    source: torch.Tensor,
    reference: torch.Tensor | None,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    pooled: torch.Tensor,
    *,
    embedded_guidance: float | None = None,
) -> torch.Tensor:
    """The DiT's raw output ``[B, C', t, h, w]`` (what it means: ``prediction``, see
    :func:`predict_velocity`, which takes the same arguments)."""
    batch = noisy.shape[0]
    timestep = (sigma.to(noisy.device, torch.float32) * 1000).expand(batch)
    guidance = None
    if embedded_guidance is not None:
        guidance = torch.full((batch,), embedded_guidance * 1000, device=noisy.device)
    in_channels = getattr(transformer, "module", transformer).config.in_channels
    return transformer(
        hidden_states=editing_input(
            noisy, source, reference, positions=reads_positions(in_channels)
        ),
        timestep=timestep,
        encoder_hidden_states=tokens.to(noisy.dtype),
        encoder_attention_mask=attention_mask,
        pooled_projections=pooled.to(noisy.dtype),
        guidance=guidance,
        return_dict=False,
    )[0]


def predict_velocity(
    transformer: torch.nn.Module,
    noisy: torch.Tensor,
    sigma: torch.Tensor,
    source: torch.Tensor,
    reference: torch.Tensor | None,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    pooled: torch.Tensor,
    *,
    embedded_guidance: float | None = None,
    prediction: str = "velocity",
    gate_reading: GateReading = PLAIN_GATE,
) -> torch.Tensor:
    """The model velocity ``[B, C, t, h, w]`` for noisy latents at noise levels ``sigma``.

    ``sigma``: ``[B]`` or 0-dim in [0, 1] (the model's timestep is ``1000 * sigma``, diffusers'
    convention); ``tokens`` ``[B, L, D]`` with its right-padded ``attention_mask`` ``[B, L]``;
    ``pooled`` ``[B, P]``. ``transformer`` may be wrapped (DDP, FSDP, peft).
    ``embedded_guidance`` feeds guidance-distilled checkpoints (``guidance_embeds=True``).
    ``prediction``: what the network's output means (see
    :func:`~viva_pipelines.model.flow_matching.velocity_from_prediction`; ``gate_reading``, how
    it reads a gated output's edit gate).
    """
    output = predict_output(
        transformer,
        noisy,
        sigma,
        source,
        reference,
        tokens,
        attention_mask,
        pooled,
        embedded_guidance=embedded_guidance,
    )
    return velocity_from_prediction(
        output, noisy, source, sigma.to(noisy.device), prediction, gate_reading
    )
