"""The arithmetic of Edit-GRPO, as small pure functions (docs/method.md, "Edit-GRPO").

Conventions we chose: advantages use the population std (ddof=0) of each group; a singleton or
constant group gets advantage 0, never NaN; advantages are clipped to +-5; the KL term compares
the policy's step mean with the reference policy's (same net, adapter disabled) under the step's
Gaussian std.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ADVANTAGE_EPS = 1e-4
ADVANTAGE_CLIP = 5.0


def group_advantages(
    rewards: torch.Tensor,
    groups: Sequence[object] | torch.Tensor,
    clip: float = ADVANTAGE_CLIP,
    *,
    min_std: float = 0.0,
) -> torch.Tensor:
    """``(r - mean_g) / (std_g + 1e-4)`` within each group, clipped to ``+-clip``.

    ``rewards``: ``[N]``; ``groups``: ``[N]`` keys (e.g. (source video, instruction) ids).
    A group whose rewards spread less than ``min_std`` (population std) gets 0: dividing its
    differences by their tiny spread would turn reward-model noise into full-size advantages.
    """
    rewards = rewards.to(torch.float64)
    keys = [g.item() if isinstance(g, torch.Tensor) else g for g in groups]
    if len(keys) != rewards.shape[0]:
        raise ValueError(f"{len(keys)} group keys for {rewards.shape[0]} rewards")
    advantages = torch.zeros_like(rewards)
    for key in dict.fromkeys(keys):
        index = torch.tensor([i for i, k in enumerate(keys) if k == key])
        members = rewards[index]
        if len(members) > 1 and members.std(unbiased=False) >= min_std:
            centred = members - members.mean()
            advantages[index] = centred / (members.std(unbiased=False) + ADVANTAGE_EPS)
    return advantages.clamp(-clip, clip).to(torch.float32)


def ppo_clipped_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate on per-sample step log-probs ``[N]``.

    Returns ``(loss, clip_fraction)``: ``mean(max(-A*rho, -A*clip(rho, 1+-eps)))`` with
    ``rho = exp(log_prob - old_log_prob)``, and the share of samples whose ratio left ``1 +- eps``.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    clip_fraction = ((ratio - 1).abs() > clip_range).float().mean()
    return loss, clip_fraction


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between the policy's and the reference's Gaussian steps (same std), per sample:
    ``mean((mu - mu_ref)^2) / (2*std^2)`` over non-batch dims -> ``[B]``."""
    dims = tuple(range(1, mean.ndim))
    squared = ((mean - ref_mean) ** 2).mean(dim=dims)
    return squared / (2 * std.reshape(std.shape[0], -1)[:, 0] ** 2)
