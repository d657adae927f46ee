"""Edit-GRPO's pure functions pinned against hand-computed values."""

import math

import pytest
import torch

from viva_pipelines.model.sde import block_means, final_step_with_logprob, sde_step_with_logprob
from viva_pipelines.train.grpo_math import group_advantages, kl_to_reference, ppo_clipped_loss


def test_sde_step_mean_and_std_by_hand():
    x, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 1.0]])
    sigma, sigma_next, a = 0.5, 0.4, 0.7
    dt = sigma_next - sigma
    std_t = a * math.sqrt(sigma / (1 - sigma))
    _, _, mean, std = sde_step_with_logprob(v, sigma, sigma_next, x, a)
    expected = (
        x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    assert torch.allclose(mean, expected)
    assert std.item() == pytest.approx(std_t * math.sqrt(-dt))


def test_at_sigma_one_the_next_sigma_is_in_the_denominator():
    x, v = torch.zeros(1, 3), torch.ones(1, 3)
    _, _, _, std = sde_step_with_logprob(v, 1.0, 0.9, x, 0.7)
    assert std.item() == pytest.approx(0.7 * math.sqrt(1.0 / (1 - 0.9)) * math.sqrt(0.1))
    assert torch.isfinite(std).all()


def test_log_prob_at_the_mean_is_minus_log_scale_minus_half_log_two_pi():
    x, v = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    _, _, mean, std = sde_step_with_logprob(v, 0.6, 0.5, x)
    _, log_prob, _, _ = sde_step_with_logprob(v, 0.6, 0.5, x, prev_sample=mean)
    expected = -math.log(std.flatten()[0].item()) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(log_prob, torch.full((2,), expected), atol=1e-6)


def test_mean_log_prob_of_own_samples_matches_the_gaussian_entropy():
    torch.manual_seed(0)
    x, v = torch.zeros(1, 20000), torch.zeros(1, 20000)
    sample, log_prob, _, std = sde_step_with_logprob(
        v, 0.8, 0.7, x, generator=torch.Generator().manual_seed(1)
    )
    expected = -math.log(std.flatten()[0].item()) - 0.5 * math.log(2 * math.pi) - 0.5
    assert log_prob.item() == pytest.approx(expected, abs=0.02)
    assert sample.std().item() == pytest.approx(std.flatten()[0].item(), rel=0.03)


def test_sde_step_refuses_to_step_backwards():
    with pytest.raises(ValueError, match="smaller"):
        sde_step_with_logprob(torch.zeros(1, 2), 0.4, 0.5, torch.zeros(1, 2))


def test_the_final_step_explores_around_the_clean_estimate_with_its_own_scale():
    x, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 1.0]])
    _, _, mean, std = final_step_with_logprob(v, 0.8, x, 0.1)
    assert torch.allclose(mean, x - 0.8 * v)  # the ODE's Euler step to sigma 0
    assert std.item() == pytest.approx(0.1)
    _, at_mean, _, _ = final_step_with_logprob(v, 0.8, x, 0.1, prev_sample=mean)
    assert at_mean.item() == pytest.approx(-math.log(0.1) - 0.5 * math.log(2 * math.pi))
    off = mean + torch.tensor([[0.1, -0.1]])  # one scale away in every dimension
    _, log_prob, _, _ = final_step_with_logprob(v, 0.8, x, 0.1, prev_sample=off)
    assert log_prob.item() == pytest.approx(at_mean.item() - 0.5, abs=1e-5)
    sample, _, _, _ = final_step_with_logprob(
        torch.zeros(1, 20000), 1.0, torch.zeros(1, 20000), 0.2, torch.Generator().manual_seed(0)
    )
    assert sample.std().item() == pytest.approx(0.2, rel=0.03)
    with pytest.raises(ValueError, match="exploration scale"):
        final_step_with_logprob(v, 0.8, x, 0.0)


def test_block_exploration_draws_one_value_per_block_and_scores_the_block_means():
    x, v = torch.zeros(3, 2, 2, 6, 7), torch.zeros(3, 2, 2, 6, 7)  # 6 x 7: edge blocks cut
    sample, log_prob, mean, _ = final_step_with_logprob(
        v, 1.0, x, 0.1, torch.Generator().manual_seed(0), cell=4
    )
    assert sample.shape == x.shape and torch.equal(mean, x)
    corner = sample[..., :4, :4]  # a whole block: one value
    assert torch.equal(corner, corner[..., :1, :1].expand_as(corner))
    edge = sample[..., 4:, 4:]  # the cut block at the bottom right: one value too
    assert torch.equal(edge, edge[..., :1, :1].expand_as(edge))
    assert not torch.equal(sample[..., 0, 0], sample[..., 0, 4])  # blocks differ
    # The log-density is that of the block means: a block one scale off costs 0.5 per block.
    draws = block_means(sample, 4) / 0.1
    expected = (
        -0.5 * draws.pow(2).mean(dim=(1, 2, 3, 4)) - math.log(0.1) - 0.5 * math.log(2 * math.pi)
    )
    assert torch.allclose(log_prob, expected, atol=1e-5)
    _, rescored, _, _ = final_step_with_logprob(v, 1.0, x, 0.1, prev_sample=sample, cell=4)
    assert torch.allclose(rescored, log_prob)  # re-scoring a stored rollout agrees
    # Only block means count: a change that averages out within every block is not seen.
    checker = 0.05 * (-1.0) ** torch.arange(4).reshape(1, 1, 1, 4, 1).expand(3, 2, 2, 4, 4)
    moved = sample.clone()
    moved[..., :4, :4] += checker
    _, same, _, _ = final_step_with_logprob(v, 1.0, x, 0.1, prev_sample=moved, cell=4)
    assert torch.allclose(same, log_prob, atol=1e-6)
    assert block_means(torch.arange(6.0).reshape(1, 1, 1, 1, 6), 4).flatten().tolist() == [
        1.5,
        4.5,
    ]


def test_group_advantages_by_hand_with_population_std():
    rewards = torch.tensor([1.0, 3.0, 5.0, 7.0, 7.0, 2.0])
    groups = ["a", "a", "b", "b", "c", "d"]
    adv = group_advantages(rewards, groups)
    assert adv[:2].tolist() == pytest.approx(
        [-1 / 1.0001, 1 / 1.0001]
    )  # population std of {1,3} = 1
    assert adv[2:4].tolist() == pytest.approx([-1 / 1.0001, 1 / 1.0001])
    assert adv[4].item() == 0.0 and adv[5].item() == 0.0  # singletons: 0, not NaN


def test_constant_groups_give_zero_and_extremes_are_clipped():
    assert group_advantages(torch.tensor([2.0, 2.0, 2.0]), [0, 0, 0]).tolist() == [0, 0, 0]
    rewards = torch.tensor([0.0] * 99 + [1.0])  # one outlier: z = 9.95 before clipping
    adv = group_advantages(rewards, [0] * 100)
    assert adv.max().item() == 5.0 and torch.isfinite(adv).all()


def test_groups_that_barely_spread_carry_no_advantage():
    rewards = torch.tensor([1.0, 1.001, 0.0, 2.0])
    groups = ["a", "a", "b", "b"]
    plain = group_advantages(rewards, groups)
    assert plain[0] < -0.8  # 0.0005 / (0.0005 + 1e-4): noise becomes a full-size advantage
    filtered = group_advantages(rewards, groups, min_std=0.01)
    assert filtered[:2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(filtered[2:], plain[2:])


def test_ppo_loss_and_clip_fraction_by_hand():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.05]))
    adv = torch.tensor([1.0, 1.0, -1.0, 2.0])
    loss, clip_fraction = ppo_clipped_loss(new, old, adv, clip_range=0.1)
    # per sample max(-A*r, -A*clip(r)): -1, -1.1 (clipped at 1.1), 0.9 (clipped at 0.9), -2.1
    assert loss.item() == pytest.approx((-1 - 1.1 + 0.9 - 2.1) / 4)
    assert clip_fraction.item() == 0.5


def test_kl_to_reference_by_hand():
    mean = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    ref = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    std = torch.full((2, 1), 0.5)
    kl = kl_to_reference(mean, ref, std)
    assert kl.tolist() == pytest.approx([((1 + 4) / 2) / (2 * 0.25), 0.0])
