"""The stochastic sampler of Edit-GRPO: one Flow-GRPO SDE step with its log-probability.

Deterministic flow-matching sampling (an ODE) gives a policy with no log-probability, so GRPO
samples with the SDE that has the same marginals. For a step from ``sigma`` to ``sigma_next``
(``dt = sigma_next - sigma < 0``) with noise level ``a``::

    std_t = a * sqrt(sigma / (1 - sigma))      (at sigma = 1: 1 - sigma_next below)
    mean  = x * (1 + std_t^2 / (2 sigma) * dt) + v * (1 + std_t^2 * (1 - sigma) / (2 sigma)) * dt
    x'    = mean + std_t * sqrt(-dt) * eps

and ``log p(x')`` is the Gaussian log-density with that mean and scale ``std_t * sqrt(-dt)``,
averaged over all non-batch dimensions.

The step to ``sigma = 0`` has no such SDE (Flow-GRPO takes it as an ODE step). A sampler that
makes its edit in one step from ``sigma = 1`` (the demo's) has only that step, so a policy over
it explores around the ODE's end point instead: ``x' = x - sigma * v + s * eps`` with a fixed
exploration scale ``s`` (:func:`final_step_with_logprob`), a Gaussian policy over the clean
result whose log-probability is scored the same way.

That exploration can be drawn per block of latent positions (``cell``): one value per ``cell
x cell`` block, so a group's candidates differ in what the rewards judge (a region's colour,
how strongly an edit shows) instead of in pixel grain, which a small reward model reads as
noise. The policy is then a Gaussian over the block means of the clean result, scored on
them. A departure from the paper, whose exploration is the SDE's, position by position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def sde_step_with_logprob(
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    x: torch.Tensor,
    noise_level: float = 0.7,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SDE step from ``x`` at ``sigma`` to ``sigma_next`` given the predicted velocity ``v``.

    ``v``, ``x``: ``[B, ...]``; ``sigma``/``sigma_next``: scalars or ``[B]``. When
    ``prev_sample`` is given (re-scoring a stored rollout) it is used instead of drawing noise.
    Returns ``(prev_sample [B, ...], log_prob [B], mean [B, ...], std)`` where ``std`` is the
    step's Gaussian scale ``std_t * sqrt(-dt)`` broadcastable to ``x``.
    """
    sigma_t = _per_sample(sigma, x)
    sigma_n = _per_sample(sigma_next, x)
    dt = sigma_n - sigma_t
    if torch.any(dt >= 0):
        raise ValueError("sigma_next must be smaller than sigma (sampling runs from noise to data)")
    denominator = 1 - torch.where(sigma_t >= 1, sigma_n, sigma_t)
    std_t = noise_level * torch.sqrt(sigma_t / denominator)
    mean = (
        x * (1 + std_t**2 / (2 * sigma_t) * dt)
        + v * (1 + std_t**2 * (1 - sigma_t) / (2 * sigma_t)) * dt
    )
    std = std_t * torch.sqrt(-dt)
    return _gaussian_step(mean, std, generator, prev_sample)


def final_step_with_logprob(
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    x: torch.Tensor,
    scale: float,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
    cell: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The last step, from ``x`` at ``sigma`` to ``sigma = 0``, explored with Gaussian noise of
    fixed ``scale`` (latent units) around the ODE's end point ``x - sigma * v`` (the model's
    clean estimate). ``cell`` > 1 draws one noise value per ``cell x cell`` block of latent
    positions (each channel and frame its own), so candidates differ block by block rather
    than position by position; the log-density is then that of the block means of
    ``x' - mean``, the Gaussian the draw is (:func:`block_means`). Shapes and return value as
    :func:`sde_step_with_logprob`'s (``x``: ``[B, C, t, h, w]`` when ``cell`` > 1)."""
    if not scale > 0:
        raise ValueError(f"the exploration scale must be > 0, got {scale!r}")
    mean = x - _per_sample(sigma, x) * v
    std = torch.full((x.shape[0], *([1] * (x.ndim - 1))), scale, dtype=x.dtype, device=x.device)
    if cell == 1:
        return _gaussian_step(mean, std, generator, prev_sample)
    coarse_mean = block_means(mean, cell)
    if prev_sample is None:
        where = generator.device if generator is not None else mean.device
        noise = torch.randn(coarse_mean.shape, generator=generator, device=where, dtype=mean.dtype)
        blocks = noise.to(mean.device).repeat_interleave(cell, -2).repeat_interleave(cell, -1)
        prev_sample = mean + std * blocks[..., : mean.shape[-2], : mean.shape[-1]]
    _, log_prob, _, _ = _gaussian_step(
        coarse_mean, std, None, block_means(prev_sample.detach(), cell)
    )
    return prev_sample, log_prob, mean, std


def block_means(latents: torch.Tensor, cell: int) -> torch.Tensor:
    """``[B, C, t, h, w]`` -> ``[B, C, t, ceil(h / cell), ceil(w / cell)]``: the mean of every
    ``cell x cell`` block of positions, blocks at the bottom and right edges cut to the grid."""
    if latents.ndim != 5:
        raise ValueError(f"latents must be [B, C, t, h, w], got {tuple(latents.shape)}")
    kernel = (1, min(cell, latents.shape[-2]), min(cell, latents.shape[-1]))
    return F.avg_pool3d(latents, kernel_size=kernel, ceil_mode=True)


def _gaussian_step(
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator | None,
    prev_sample: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``mean + std * eps`` (or take ``prev_sample``) and its mean Gaussian log-density."""
    if prev_sample is None:
        # Drawn where the generator lives (a CPU generator keeps runs reproducible on GPUs).
        where = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=where, dtype=mean.dtype)
        prev_sample = mean + std * noise.to(mean.device)
    log_prob = -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - _HALF_LOG_2PI
    return prev_sample, log_prob.mean(dim=tuple(range(1, mean.ndim))), mean, std


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``[B]`` sigma as ``[B, 1, …, 1]`` in ``like``'s dtype and device."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.ndim == 0:
        tensor = tensor.expand(like.shape[0])
    return tensor.reshape(-1, *([1] * (like.ndim - 1)))
