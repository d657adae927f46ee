"""Rectified-flow objective and sampler, pinned against hand-computed values and against the
diffusers ``FlowMatchEulerDiscreteScheduler`` (schedule and full sampling loop)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from viva_pipelines.model.flow_matching import (
    VelocityFn,
    add_noise,
    euler_step,
    guided_velocity,
    inference_sigmas,
    masked_flow_matching_loss,
    resize_mask_to_latents,
    sample,
    sample_sigmas,
    shift_sigmas,
    velocity_target,
)


def test_add_noise_and_velocity_by_hand() -> None:
    x0 = torch.tensor([[2.0], [4.0]])
    noise = torch.tensor([[-1.0], [1.0]])
    x_t = add_noise(x0, noise, torch.tensor([0.25, 0.5]))
    # 0.75·2 + 0.25·(-1) = 1.25 ; 0.5·4 + 0.5·1 = 2.5
    assert torch.equal(x_t, torch.tensor([[1.25], [2.5]]))
    assert torch.equal(velocity_target(x0, noise), torch.tensor([[-3.0], [-3.0]]))


def test_add_noise_endpoints_broadcast_over_video_dims() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 4, 4, generator=g)
    x_t = add_noise(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(x_t[0], x0[0])
    assert torch.equal(x_t[1], noise[1])


def test_shift_by_hand() -> None:
    # 3sigma / (1 + 2sigma): 0.75/1.5 = 0.5 ; 1.5/2 = 0.75 ; 3/3 = 1
    out = shift_sigmas(torch.tensor([0.25, 0.5, 1.0]), 3.0)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.75, 1.0]))
    s = torch.tensor([0.0, 0.3, 0.9])
    assert torch.equal(shift_sigmas(s, 1.0), s)
    with pytest.raises(ValueError):
        shift_sigmas(s, 0.0)


def test_sample_sigmas_logit_normal() -> None:
    a = sample_sigmas(20_000, mean=0.5, std=0.8, generator=torch.Generator().manual_seed(1))
    b = sample_sigmas(20_000, mean=0.5, std=0.8, generator=torch.Generator().manual_seed(1))
    assert a.shape == (20_000,)
    assert torch.equal(a, b)
    assert bool(((a > 0) & (a < 1)).all())
    # E[sigmoid(0.5 + 0.8 z)] by quadrature over the normal density.
    z = torch.linspace(-8, 8, 20_001, dtype=torch.float64)
    pdf = torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    expected = (torch.sigmoid(0.5 + 0.8 * z) * pdf).sum() * (z[1] - z[0])
    assert abs(a.double().mean().item() - expected.item()) < 0.01
    shifted = sample_sigmas(
        20_000, mean=0.5, std=0.8, shift=3.0, generator=torch.Generator().manual_seed(1)
    )
    assert bool((shifted >= a).all())
    torch.testing.assert_close(shifted, shift_sigmas(a, 3.0))
    assert shifted.mean() > a.mean() + 0.1


def _pred_target() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)


def test_masked_loss_constant_weights_equal_plain_mse() -> None:
    pred, target = _pred_target()
    mse = ((pred - target) ** 2).mean()
    ones = torch.ones(2, 1, 3, 4, 4)
    # w = 2 scales every term and the normaliser by a power of two: bit-identical
    assert torch.equal(masked_flow_matching_loss(pred, target, ones, 1.0), mse)
    # any other constant weight only up to rounding
    torch.testing.assert_close(masked_flow_matching_loss(pred, target, ones, 7.3), mse)
    rand_mask = torch.rand(2, 1, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(masked_flow_matching_loss(pred, target, rand_mask, 0.0), mse)
    assert torch.equal(masked_flow_matching_loss(pred, target, None, 5.0), mse)
    with pytest.raises(ValueError):
        masked_flow_matching_loss(pred, target, rand_mask, -1.0)


def test_masked_loss_by_hand_with_channels() -> None:
    # One sample, 2 channels, 2 latent positions; position 0 masked, λ = 1 → weights 2 and 1,
    # counted once per channel: (2·(e00 + e10) + (e01 + e11)) / (2·2 + 2·1).
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]).reshape(1, 2, 1, 1, 2)
    target = torch.zeros_like(pred)
    mask = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 1, 2)
    expected = (2 * (1 + 9) + (4 + 16)) / 6
    loss = masked_flow_matching_loss(pred, target, mask, 1.0)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected)


def test_masked_loss_moves_weight_to_edit_region() -> None:
    pred = torch.zeros(1, 2, 1, 2, 2)
    target = torch.ones(1, 2, 1, 2, 2)
    mask = torch.zeros(1, 1, 1, 2, 2)
    mask[..., 0, 0] = 1.0
    pred[:, :, :, 0, 0] = 1.0  # perfect inside the edit region, error 1 everywhere else
    losses = [masked_flow_matching_loss(pred, target, mask, lam).item() for lam in (0, 1, 4, 16)]
    # 3 erring positions of weight 1, one perfect of weight 1 + λ: 3 / (4 + λ).
    assert losses == pytest.approx([3 / 4, 3 / 5, 3 / 8, 3 / 20])


def test_resize_mask_area() -> None:
    mask = torch.zeros(1, 1, 2, 4, 4)
    mask[0, 0, 0, 0, 0] = 1.0  # one pixel of the top-left 2x2 cell, first frame only
    mask[0, 0, :, 2:, 2:] = 1.0  # the whole bottom-right cell, both frames
    mask[0, 0, 0, 0:2, 2] = 1.0  # half of the top-right cell, first frame only
    out = resize_mask_to_latents(mask, (1, 2, 2))
    assert out.shape == (1, 1, 1, 2, 2)
    # each latent averages 2 frames x 2x2 pixels = 8 values
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([[1 / 8, 2 / 8], [0.0, 1.0]]))
    bool_out = resize_mask_to_latents(mask.bool(), (2, 2, 2))
    torch.testing.assert_close(bool_out[0, 0, 0], torch.tensor([[0.25, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError):
        resize_mask_to_latents(torch.zeros(1, 2, 2, 4, 4), (1, 2, 2))


@pytest.mark.parametrize(("num_steps", "shift"), [(1, 1.0), (4, 1.0), (10, 3.0), (30, 7.0)])
def test_inference_sigmas_match_diffusers(num_steps: int, shift: float) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    ours = inference_sigmas(num_steps, shift)
    assert ours.shape == (num_steps + 1,)
    assert ours[0].item() == 1.0 and ours[-1].item() == 0.0
    assert bool((ours[1:] < ours[:-1]).all())
    torch.testing.assert_close(ours, scheduler.sigmas, rtol=0, atol=1e-7)


def test_euler_step_by_hand() -> None:
    x, v = torch.tensor([1.0, 2.0]), torch.tensor([4.0, -2.0])
    assert torch.equal(euler_step(x, v, 0.75, 0.5), torch.tensor([0.0, 2.5]))
    half = euler_step(x.bfloat16(), v.bfloat16(), 0.75, 0.5)
    assert half.dtype == torch.bfloat16


def _point_mass_velocity(x0_star: torch.Tensor) -> VelocityFn:
    """Exact rectified-flow velocity when the data is the single point ``x0*``: ``ε = x0* +
    (x - x0*)/sigma`` so ``v = ε - x0* = (x - x0*)/sigma`` (never evaluated at sigma = 0)."""

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x - x0_star) / sigma

    return velocity


@pytest.mark.parametrize(("num_steps", "shift"), [(3, 1.0), (12, 3.0)])
def test_sample_matches_diffusers_scheduler_loop(num_steps: int, shift: float) -> None:
    g = torch.Generator().manual_seed(4)
    target, x_T = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 4, 4, generator=g)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # not the exact flow: a field whose Euler result depends on every sigma in the schedule
        return x - target + sigma * torch.sin(x)

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    x = x_T
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1], strict=True):
        x = scheduler.step(velocity(x, sigma), t, x).prev_sample
    assert torch.equal(sample(velocity, x_T, num_steps, shift), x)


@pytest.mark.parametrize(("num_steps", "shift"), [(1, 1.0), (7, 1.0), (20, 5.0)])
def test_sampler_recovers_point_mass(num_steps: int, shift: float) -> None:
    g = torch.Generator().manual_seed(5)
    x0_star, x_T = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    x0 = sample(_point_mass_velocity(x0_star), x_T, num_steps, shift)
    torch.testing.assert_close(x0, x0_star, rtol=0, atol=1e-5)


def test_guided_velocity() -> None:
    v_u, v_c, v_s = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0]), torch.tensor([2.0, 1.0])
    assert torch.equal(guided_velocity(v_u, v_c, 1.0), v_c)
    assert torch.equal(guided_velocity(v_u, v_c, 0.0), v_u)
    # 1 + 4·(3 - 1) = 9 ; -2 + 4·(0 + 2) = 6
    assert torch.equal(guided_velocity(v_u, v_c, 4.0), torch.tensor([9.0, 6.0]))
    # instruction scale 7.5 on (v_c - v_s), source scale 1.5 on (v_s - v_u):
    # 1 + 1.5·1 + 7.5·1 = 10 ; -2 + 1.5·3 + 7.5·(-1) = -5
    out = guided_velocity(v_u, v_c, 7.5, v_source=v_s, source_scale=1.5)
    assert torch.equal(out, torch.tensor([10.0, -5.0]))
    assert torch.equal(guided_velocity(v_u, v_c, 1.0, v_source=v_s, source_scale=1.0), v_c)
    with pytest.raises(ValueError):
        guided_velocity(v_u, v_c, 2.0, v_source=v_s)


def test_source_residual_prediction_is_the_velocity_towards_source_plus_output() -> None:
    from viva_pipelines.model.flow_matching import velocity_from_prediction

    noisy, source = torch.tensor([[3.0], [1.0]]), torch.tensor([[1.0], [2.0]])
    output = torch.tensor([[0.5], [-1.0]])
    sigmas = torch.tensor([0.5, 0.25])
    v = velocity_from_prediction(output, noisy, source, sigmas, "source_residual")
    # x̂0 = source + output = (1.5, 1.0); v = (x - x̂0) / sigma = (1.5 / 0.5, 0 / 0.25)
    assert torch.equal(v, torch.tensor([[3.0], [0.0]]))
    assert velocity_from_prediction(output, noisy, source, sigmas, "velocity") is output
    with pytest.raises(ValueError, match="unknown prediction"):
        velocity_from_prediction(output, noisy, source, sigmas, "epsilon")


def test_source_residual_loss_is_the_clean_error_over_sigma_and_zero_output_keeps_the_source():
    """Training on (v̂ - v)² with a residual output is the x0 error scaled by 1/sigma², and an
    all-zero output (an untrained, zero-initialised head) samples the source back exactly."""
    from viva_pipelines.model.flow_matching import velocity_from_prediction

    g = torch.Generator().manual_seed(0)
    x0, noise, source = (torch.randn(3, 2, 4, generator=g) for _ in range(3))
    sigmas = torch.tensor([0.2, 0.5, 0.9])
    x_t = add_noise(x0, noise, sigmas)
    output = torch.randn(3, 2, 4, generator=g)
    v = velocity_from_prediction(output, x_t, source, sigmas, "source_residual")
    per_item = ((v - velocity_target(x0, noise)) ** 2).mean(dim=(1, 2))
    expected = ((source + output - x0) ** 2).mean(dim=(1, 2)) / sigmas**2
    torch.testing.assert_close(per_item, expected)

    def zero_output(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return velocity_from_prediction(torch.zeros_like(x), x, source, sigma, "source_residual")

    out = sample(zero_output, torch.randn(3, 2, 4, generator=g), num_steps=7, shift=3.0)
    torch.testing.assert_close(out, source, rtol=0, atol=1e-5)


def test_clean_weighting_is_the_implied_clean_error_at_every_noise_level() -> None:
    from viva_pipelines.model.flow_matching import sigma_loss_weights

    g = torch.Generator().manual_seed(3)
    x0, noise, pred = (torch.randn(3, 2, 4, generator=g) for _ in range(3))
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    x_t = add_noise(x0, noise, sigmas)
    weights = sigma_loss_weights(sigmas, "clean")
    loss = masked_flow_matching_loss(pred, velocity_target(x0, noise), None, 0.0, weights)
    clean = x_t - sigmas.reshape(-1, 1, 1) * pred  # the clean video each prediction implies
    per_item = ((clean - x0) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(loss, per_item.mean())
    assert sigma_loss_weights(sigmas, "velocity") is None
    with pytest.raises(ValueError, match="weighting"):
        sigma_loss_weights(sigmas, "snr")


def test_gated_output_applies_its_residual_only_where_the_gate_opens() -> None:
    from viva_pipelines.model.flow_matching import (
        edit_gate_logits,
        gate_loss,
        output_channels,
        velocity_from_prediction,
    )

    noisy, source = torch.zeros(2, 3, 1, 1, 2), torch.ones(2, 3, 1, 1, 2)
    residual = torch.full((2, 3, 1, 1, 2), 4.0)
    logits = torch.tensor([-50.0, 50.0]).reshape(1, 1, 1, 1, 2).expand(2, 1, 1, 1, 2)
    output = torch.cat([residual, logits], dim=1)
    assert output_channels(3, "source_gated") == 4 and output_channels(3, "velocity") == 3
    assert torch.equal(edit_gate_logits(output, "source_gated"), output[:, 3:])
    assert edit_gate_logits(output, "source_residual") is None
    v = velocity_from_prediction(output, noisy, source, torch.tensor(0.5), "source_gated")
    assert v.shape == source.shape
    # Shut gate: x̂0 = source, v = (0 - 1) / 0.5; open gate: x̂0 = source + 4, v = -5 / 0.5.
    torch.testing.assert_close(v[..., 0], torch.full((2, 3, 1, 1), -2.0))
    torch.testing.assert_close(v[..., 1], torch.full((2, 3, 1, 1), -10.0))
    mask = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 1, 2).expand(2, 1, 1, 1, 2)
    assert gate_loss(logits, mask) < 1e-6 < gate_loss(-logits, mask)


def test_blend_output_draws_its_content_over_the_source_where_the_gate_opens() -> None:
    from viva_pipelines.model.flow_matching import output_channels, velocity_from_prediction

    noisy, source = torch.zeros(2, 3, 1, 1, 3), torch.ones(2, 3, 1, 1, 3)
    content = torch.full((2, 3, 1, 1, 3), 4.0)
    logits = torch.tensor([-50.0, 50.0, 0.0]).reshape(1, 1, 1, 1, 3).expand(2, 1, 1, 1, 3)
    output = torch.cat([content, logits], dim=1)
    assert output_channels(3, "source_blend") == 4
    v = velocity_from_prediction(output, noisy, source, torch.tensor(0.5), "source_blend")
    clean = noisy - 0.5 * v  # the clean latents the velocity implies
    # Shut gate: the source; open gate: the content itself (not source + content); half: the mean.
    torch.testing.assert_close(clean[..., 0], torch.ones(2, 3, 1, 1))
    torch.testing.assert_close(clean[..., 1], torch.full((2, 3, 1, 1), 4.0))
    torch.testing.assert_close(clean[..., 2], torch.full((2, 3, 1, 1), 2.5))


def test_gate_reading_keeps_the_source_where_the_gate_is_below_its_threshold() -> None:
    from viva_pipelines.model.flow_matching import (
        PLAIN_GATE,
        GateReading,
        velocity_from_prediction,
    )

    gates = torch.tensor([0.2, 0.5, 0.73, 0.95])
    logits = torch.logit(gates)
    assert torch.equal(PLAIN_GATE.logits(logits), logits)  # training's reading: as it is
    read = torch.sigmoid(GateReading(threshold=0.73).logits(logits))
    # The threshold reads as one half, the order is kept, and a doubtful gate is shut further.
    torch.testing.assert_close(read[2], torch.tensor(0.5))
    assert torch.all(read.diff() > 0) and torch.all(read < gates)
    sharp = torch.sigmoid(GateReading(threshold=0.5, sharpness=3).logits(logits))
    assert sharp[0] < gates[0] and sharp[3] > gates[3] and sharp[1] == 0.5
    noisy, source = torch.zeros(1, 3, 1, 1, 4), torch.ones(1, 3, 1, 1, 4)
    output = torch.cat([torch.full((1, 3, 1, 1, 4), 4.0), logits.reshape(1, 1, 1, 1, 4)], dim=1)
    v = velocity_from_prediction(
        output, noisy, source, torch.tensor(0.5), "source_blend", GateReading(threshold=0.73)
    )
    clean = noisy - 0.5 * v  # source 1 and content 4 blended by the gate as read
    torch.testing.assert_close(clean[0, 0, 0, 0], 1 + 3 * read)
    for bad in ({"threshold": 0.0}, {"threshold": 1.0}, {"sharpness": 0.0}):
        with pytest.raises(ValueError, match="gate threshold"):
            GateReading(**bad)
