"""Rectified flow for the video editing diffusion transformer: noising, the mask-weighted
training loss, and an Euler sampler with classifier-free and source guidance.

Conventions (the diffusers / SD3 / HunyuanVideo ones, so weights and schedulers interoperate):

- ``sigma ∈ [0, 1]`` is the noise level: ``sigma = 0`` is data, ``sigma = 1`` is pure noise.
- ``x_sigma = (1 - sigma)·x0 + sigma·ε``; the model predicts its velocity
  ``v = dx_sigma/dsigma = ε - x0``.
- Sampling integrates ``dx/dsigma = v`` from ``sigma = 1`` down to ``sigma = 0``.

Latent videos are ``[B, C, t, h, w]``; every function below also works for any ``[B, ...]``
tensor unless it says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity_fn(x [B, ...], sigma 0-dim) -> v [B, ...]``: the (guided) model velocity."""


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Time-shift noise levels (SD3 / HunyuanVideo):
    ``sigma' = shift·sigma / (1 + (shift - 1)·sigma)``.

    ``shift > 1`` pushes sigma towards 1, i.e. spends more training / sampling effort at high
    noise, which large (many-token) video latents need because their content survives more noise.
    Fixes 0 and 1; ``shift = 1`` is the identity. Any shape; returns the same shape.
    """
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    batch: int,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels ``[B]``: logit-normal ``sigmoid(mean + std·N(0, 1))``, then shifted.

    The logit-normal concentrates samples at intermediate sigma, where the velocity is hardest to
    predict (SD3); ``shift`` then moves that mass towards high noise. Values lie in (0, 1).
    """
    z = torch.randn(batch, generator=generator, device=device)
    return shift_sigmas(torch.sigmoid(mean + std * z), shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The point on the straight path from data to noise: ``x_sigma = (1 - sigma)·x0 + sigma·ε``.

    ``x0``, ``noise``: ``[B, ...]``; ``sigmas``: ``[B]`` (one level per sample, broadcast over the
    other dims). Returns ``[B, ...]``.
    """
    s = sigmas.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def perturbed_input(
    noisy: torch.Tensor, perturbation: torch.Tensor, sigmas: torch.Tensor
) -> torch.Tensor:
    """``x_sigma + sigma·d``: the noisy input with its noise perturbed by ``d`` (``[B, ...]``,
    e.g. ``gamma·N(0, 1)``) while the training target stays the velocity of the unperturbed
    path.

    At sampling time the model reads states that its own earlier steps got slightly wrong,
    never the exact noisy training points; trained only on those, it takes such errors for
    signal and keeps them (exposure bias). Perturbed inputs teach it to pull them back (the
    input perturbation of DDPM-IP).
    """
    s = sigmas.reshape(-1, *([1] * (noisy.ndim - 1))).to(noisy.dtype)
    return noisy + s * perturbation.to(noisy.dtype)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``v = ε - x0`` (the path's constant velocity), ``[B, ...]``."""
    return noise - x0


#: What the editing DiT's output means (:func:`velocity_from_prediction`). ``velocity``: the
#: velocity itself (diffusers, SD3 and HunyuanVideo checkpoints; the paper's setting).
#: ``source_residual``: the clean target minus the source latents. ``source_gated``: that
#: residual and, in one more channel, where to apply it (an edit gate). ``source_blend``: the
#: edited content itself and the gate that blends it over the source.
PREDICTIONS = ("velocity", "source_residual", "source_gated", "source_blend")

#: The predictions whose last output channel is an edit gate.
GATED_PREDICTIONS = ("source_gated", "source_blend")


def output_channels(latent_channels: int, prediction: str) -> int:
    """Channels the DiT outputs for ``latent_channels`` latents: one more for the edit gate."""
    return latent_channels + (prediction in GATED_PREDICTIONS)


def edit_gate_logits(output: torch.Tensor, prediction: str) -> torch.Tensor | None:
    """The edit gate's logits ``[B, 1, ...]`` of a gated output, else None."""
    return output[:, -1:] if prediction in GATED_PREDICTIONS else None


@dataclass(frozen=True)
class GateReading:
    """How sampling reads a trained edit gate: ``g' = sigmoid(sharpness·(logit g - logit
    threshold))``. Training always reads it plainly (``threshold`` 0.5, ``sharpness`` 1: the
    gate is the model's estimate of how likely a cell is edited, which is what its BCE teaches).
    Under doubt about where the edit goes, that estimate opens a little over many places, and
    each such place blends some of the new content over the untouched background; a threshold
    above one half keeps the source where the model is unsure (docs/benchmark.md measures it on
    the val split). ``sharpness`` > 1 pushes the gate towards 0 or 1."""

    threshold: float = 0.5
    sharpness: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1 or self.sharpness <= 0:
            raise ValueError(
                f"gate threshold must be in (0, 1) and sharpness > 0, got {self.threshold}, "
                f"{self.sharpness}"
            )

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The gate logits ``[B, 1, ...]`` as sampling reads them (the plain reading returns
        them exactly: ``1·(x - log 1) = x``)."""
        return self.sharpness * (logits - math.log(self.threshold / (1 - self.threshold)))


#: The gate read as trained.
PLAIN_GATE = GateReading()


def gate_loss(logits: torch.Tensor, mask_latent: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the edit gate against the (area-resized, fractional) edit mask
    ``[B, 1, t, h, w]``: the gate learns where edits happen from the pairs' masks, and the
    model alone decides where they happen at inference."""
    return F.binary_cross_entropy_with_logits(logits.float(), mask_latent.float())


def velocity_from_prediction(
    output: torch.Tensor,
    noisy: torch.Tensor,
    source: torch.Tensor,
    sigmas: torch.Tensor,
    prediction: str,
    gate_reading: GateReading = PLAIN_GATE,
) -> torch.Tensor:
    """The velocity ``[B, ...]`` that a model output ``[B, ...]`` stands for.

    ``source_residual``: the output is ``x̂0 - source`` (what the edit changes), so
    ``x̂0 = source + output`` and ``v̂ = (x_sigma - x̂0) / sigma``, the velocity of the straight
    path through ``x_sigma`` that ends at ``x̂0``. Training on ``(v̂ - v)²`` is then the same
    objective as with ``velocity`` (it equals ``(x̂0 - x0)² / sigma²``), but what the network has
    to produce where nothing changes is zero, instead of a copy of its noisy input through a
    narrow patch embedding: the unchanged background comes back exactly, and a zero-initialised
    output layer starts as the identity edit. ``source_gated``: the output's last channel is a
    gate ``g = sigmoid(logit)`` and ``x̂0 = source + g·residual``: where the gate is shut the
    source comes back exactly, however imprecise the residual there, and shutting it takes one
    logit instead of a whole vector held at zero. ``source_blend``: the same gate blends the
    output itself over the source, ``x̂0 = (1 - g)·source + g·output``: inside an edit the
    model draws the new content (a flat red shape, say) instead of that content minus the
    source, which would make it reproduce every source pixel it replaces. ``sigmas``: ``[B]``
    or 0-dim, all > 0 (the sampler never evaluates the model at sigma = 0). ``gate_reading``:
    how a gated output's gate is read (:class:`GateReading`; plainly in training). Returns
    ``[B, C, ...]`` (the gate channel consumed); computed in float32, returned in
    ``output``'s dtype.
    """
    if prediction == "velocity":
        return output
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; known: {', '.join(PREDICTIONS)}")
    s = sigmas.float().expand(output.shape[0]).reshape(-1, *([1] * (output.ndim - 1)))
    residual = output.float()
    if prediction in GATED_PREDICTIONS:
        gate = torch.sigmoid(gate_reading.logits(residual[:, -1:]))
        residual = residual[:, :-1]
        if prediction == "source_blend":
            residual = residual - source.float()
        residual = gate * residual
    clean = source.float() + residual
    return ((noisy.float() - clean) / s).to(output.dtype)


def resize_mask_to_latents(mask: torch.Tensor, latent_shape: Sequence[int]) -> torch.Tensor:
    """Edit-region mask ``[B, 1, T, H, W]`` (pixel/frame grid, values in [0, 1]) to the latent
    grid ``latent_shape = (t, h, w)``: returns ``[B, 1, t, h, w]``, float.

    Area interpolation (average over each latent cell's footprint) so a latent that covers the
    edit only partly gets a fractional weight instead of an all-or-nothing nearest sample.
    """
    if mask.ndim != 5 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B, 1, T, H, W], got {tuple(mask.shape)}")
    if len(latent_shape) != 3:
        raise ValueError(f"latent_shape must be (t, h, w), got {tuple(latent_shape)}")
    if not mask.is_floating_point():
        mask = mask.float()
    return F.interpolate(mask, size=tuple(latent_shape), mode="area")


#: How the squared velocity error of each sample is weighted by its noise level.
LOSS_WEIGHTINGS = ("velocity", "clean")


def sigma_loss_weights(sigmas: torch.Tensor, weighting: str) -> torch.Tensor | None:
    """Per-sample weights ``[B]`` of the velocity error, or None for none.

    ``velocity``: none, the rectified-flow loss as published. ``clean``: ``sigma²``, which makes
    ``sigma²·(v̂ - v)² = (x̂0 - x0)²`` the error of the clean video the model implies
    (``x̂0 = x_sigma - sigma·v̂``), equally weighted at every noise level. The plain loss weights
    that error by ``1/sigma²``, i.e. barely at high noise, where an editing model already knows most of
    the answer from its source and where the sampler's first steps fix the layout for good.
    """
    if weighting == "velocity":
        return None
    if weighting != "clean":
        raise ValueError(
            f"unknown loss weighting {weighting!r}; known: {', '.join(LOSS_WEIGHTINGS)}"
        )
    return sigmas.float() ** 2


def masked_flow_matching_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask_latent: torch.Tensor | None,
    weight_lambda: float,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted MSE ``Σ w·(v̂ - v)² / Σ w`` with ``w = 1 + λ·M``: a 0-dim float32 tensor.

    Up-weighting the edit region keeps the model from learning the cheap identity mapping on
    the (mostly unchanged) rest of the video. ``pred``, ``target``: ``[B, C, t, h, w]``;
    ``mask_latent``: ``[B, 1, t, h, w]`` in [0, 1] (see :func:`resize_mask_to_latents`),
    broadcast over channels; the normaliser sums the broadcast weights, so every channel counts
    and a constant weight (``M ≡ 1``, or ``λ = 0``, or no mask) gives the plain
    ``mean((v̂ - v)²)``. ``sample_weights`` ``[B]`` (see :func:`sigma_loss_weights`) multiply
    each sample's terms but not the normaliser, which so depends on no noise level drawn:
    micro-batches then add up to their whole batch (gradient accumulation). Computed in
    float32 so bf16 predictions do not lose the sum.
    """
    if weight_lambda < 0:
        raise ValueError(f"weight_lambda must be >= 0 (weights stay >= 1), got {weight_lambda}")
    sq_err = (pred.float() - target.float()) ** 2
    if (mask_latent is None or weight_lambda == 0) and sample_weights is None:
        return sq_err.mean()
    weights = torch.ones_like(sq_err)
    if mask_latent is not None and weight_lambda:
        weights = weights * (1 + weight_lambda * mask_latent.float())
    normaliser = weights.sum()
    if sample_weights is not None:
        weights = weights * sample_weights.float().reshape(-1, *([1] * (sq_err.ndim - 1)))
    return (weights * sq_err).sum() / normaliser


def inference_sigmas(
    num_steps: int, shift: float = 1.0, *, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """Sampling noise levels ``[num_steps + 1]``, from 1 down to a final 0, float32.

    Identical to ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)``'s
    ``scheduler.sigmas`` (static shift), so results match pipelines built on that scheduler.
    That construction is reproduced literally, quirk included: the schedule is linear between
    1 and the *shifted* smallest training level ``shift_sigmas(1 / num_train_timesteps)`` and
    is then shifted again.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    # As the scheduler's __init__: float32 training levels 1/N .. 1, shifted; take the smallest.
    train = torch.arange(1, num_train_timesteps + 1, dtype=torch.float32) / num_train_timesteps
    sigma_min = shift_sigmas(train, shift)[0].item()
    # As set_timesteps: linspace in float64 (numpy) over timesteps, shifted, then cast.
    timesteps = np.linspace(num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
    sigmas = shift_sigmas(torch.from_numpy(timesteps / num_train_timesteps), shift)
    return torch.cat([sigmas.float(), torch.zeros(1)])


def euler_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
) -> torch.Tensor:
    """One Euler step of ``dx/dsigma = v``: ``x + (sigma_next - sigma)·v``
    (``sigma_next < sigma`` when denoising).

    ``x``, ``v``: ``[B, ...]``; ``sigma``, ``sigma_next``: scalars (or broadcastable). Computed in
    float32 and cast back to ``v``'s dtype, as the diffusers scheduler does, so low-precision
    latents do not accumulate rounding over the steps.
    """
    return (x.float() + (sigma_next - sigma) * v.float()).to(v.dtype)


def guided_velocity(
    v_uncond: torch.Tensor,
    v_cond: torch.Tensor,
    scale: float,
    *,
    v_source: torch.Tensor | None = None,
    source_scale: float | None = None,
) -> torch.Tensor:
    """Classifier-free guidance of velocities (all ``[B, ...]``).

    Without a source: ``v = v_uncond + scale·(v_cond - v_uncond)``.

    With source guidance (InstructPix2Pix style), three passes of the model:
    ``v_uncond`` (neither source video nor instruction), ``v_source`` (source video only) and
    ``v_cond`` (source video and instruction), and
    ``v = v_uncond + source_scale·(v_source - v_uncond) + scale·(v_cond - v_source)``:
    ``source_scale`` is the *source / video* guidance (faithfulness to the input video) and
    ``scale`` the *instruction / text* guidance (strength of the edit). Scales 1 give
    ``v_cond``; ``scale = 0`` gives the source-only prediction ``v_uncond + source_scale·(...)``.
    """
    if (v_source is None) != (source_scale is None):
        raise ValueError("v_source and source_scale must be given together")
    if v_source is None:
        return v_uncond + scale * (v_cond - v_uncond)
    return v_uncond + source_scale * (v_source - v_uncond) + scale * (v_cond - v_source)


@torch.no_grad()
def sample(
    velocity_fn: VelocityFn,
    x_T: torch.Tensor,
    num_steps: int,
    shift: float = 1.0,
    *,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate from noise ``x_T`` (``[B, ...]``, at sigma = 1) to data with Euler steps on
    :func:`inference_sigmas`; returns ``x_0`` of the same shape.

    ``velocity_fn(x, sigma)`` gets the current latents and sigma as a 0-dim float32 tensor on
    ``x_T``'s device (the model's timestep is ``sigma·1000`` in diffusers' convention) and returns
    the velocity, guided already (see :func:`guided_velocity`). It is never called at sigma = 0.
    """
    sigmas = inference_sigmas(num_steps, shift).to(x_T.device)
    x = x_T
    for i in tqdm(range(num_steps), disable=not progress, desc="sampling"):
        x = euler_step(x, velocity_fn(x, sigmas[i]), sigmas[i], sigmas[i + 1])
    return x
