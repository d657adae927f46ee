"""Edit-GRPO loop: rollouts, LoRA, the reference policy, and a reward that goes up."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from viva_pipelines.model.pipeline import Conditions
from viva_pipelines.model.transformer import build_transformer, tiny_transformer_config
from viva_pipelines.train.config import GrpoSampling
from viva_pipelines.train.grpo import (
    CandidateBatch,
    EditContext,
    add_lora,
    explored_steps,
    grpo_iteration,
    rollout,
    sde_window,
)

C, D, G = 4, 16, 8


def context(batch: int, guidance: float = 1.0) -> EditContext:
    g = torch.Generator().manual_seed(0)
    source = torch.randn(1, C, 1, 8, 8, generator=g).expand(batch, -1, -1, -1, -1)
    tokens = torch.randn(1, 5, D, generator=g).expand(batch, -1, -1)
    mask = torch.ones(batch, 5, dtype=torch.long)
    cond = Conditions.from_tokens(tokens, mask, "instructor_mean")
    uncond = Conditions.from_tokens(torch.zeros(batch, 1, D), mask[:, :1], "instructor_mean")
    return EditContext(source.contiguous(), None, cond, uncond, guidance_scale=guidance)


def policy(seed: int = 0) -> torch.nn.Module:
    return add_lora(build_transformer(tiny_transformer_config(C, D), seed=seed), rank=4, alpha=4)


def test_rollout_keeps_every_step_and_its_log_prob():
    model = policy()
    run = rollout(
        model, context(G, guidance=2.0), num_steps=5, generator=torch.Generator().manual_seed(1)
    )
    assert run.latents.shape == (6, G, C, 1, 8, 8)
    assert run.log_probs.shape == (4, G)  # the last step, to sigma 0, is deterministic
    assert torch.isfinite(run.log_probs).all()
    again = rollout(
        model, context(G, guidance=2.0), num_steps=5, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(run.latents, again.latents)  # seeded
    assert not torch.equal(run.final[0], run.final[1])  # candidates differ


def test_groups_share_their_start_and_a_window_limits_the_stochastic_steps():
    model = policy()
    run = rollout(
        model,
        context(G),
        num_steps=6,
        group_size=4,
        sde_steps=[1, 2],
        generator=torch.Generator().manual_seed(1),
    )
    start = run.latents[0]
    assert torch.equal(start[0], start[3]) and not torch.equal(start[3], start[4])
    assert run.sde_steps == [1, 2] and run.log_probs.shape == (2, G)
    # Before the window every candidate of a group follows the same ODE path; inside, they part.
    assert torch.equal(run.latents[1][0], run.latents[1][3])
    assert not torch.equal(run.latents[3][0], run.latents[3][3])
    ode = rollout(
        model,
        context(G),
        num_steps=6,
        group_size=4,
        sde_steps=[],
        generator=torch.Generator().manual_seed(1),
    )
    assert ode.log_probs.shape == (0, G) and torch.equal(ode.final[0], ode.final[3])
    windows = [sde_window(7, 3, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(len(w) == 3 and w == list(range(w[0], w[0] + 3)) and w[-1] <= 6 for w in windows)
    assert len({w[0] for w in windows}) > 1 and sde_window(7, 7, torch.Generator()) is None
    assert explored_steps(8, 0.0) == 7 and explored_steps(8, 0.1) == 8


def test_a_one_step_rollout_explores_around_the_one_step_edit():
    model, ctx = policy(), context(G)
    run = rollout(
        model,
        ctx,
        num_steps=1,
        final_noise=0.1,
        group_size=4,
        generator=torch.Generator().manual_seed(1),
    )
    assert run.sde_steps == [0] and run.log_probs.shape == (1, G)
    ode = rollout(
        model, ctx, num_steps=1, group_size=4, generator=torch.Generator().manual_seed(1)
    )  # the inference sampler: one Euler step, no exploration
    assert ode.log_probs.shape == (0, G) and torch.equal(run.latents[0], ode.latents[0])
    spread = (run.final - ode.final).std().item()
    assert abs(spread - 0.1) < 0.01  # the one-step edit plus noise of the exploration scale
    assert not torch.equal(run.final[0], run.final[1])  # a group's candidates part
    assert GrpoSampling().num_steps == 1 and GrpoSampling().final_noise > 0  # the demo's
    with pytest.raises(ValidationError, match="final_noise"):
        GrpoSampling(num_steps=1, final_noise=0.0)  # nothing would explore


def test_lora_starts_as_the_base_model_and_only_the_adapter_trains():
    base = build_transformer(tiny_transformer_config(C, D), seed=0)
    ctx = context(2)
    before = rollout(base, ctx, num_steps=3, generator=torch.Generator().manual_seed(2)).final
    model = add_lora(base, rank=4, alpha=4)
    after = rollout(model, ctx, num_steps=3, generator=torch.Generator().manual_seed(2)).final
    torch.testing.assert_close(after, before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def brightness_in_mask(latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """The known reward: mean value of the latents inside a fixed region (top-left 4x4)."""
    value = latents[:, :, :, :4, :4].mean(dim=(1, 2, 3, 4))
    return {"total": value, "brightness": value}


@pytest.mark.parametrize(
    ("num_steps", "final_noise", "cell"),
    [(4, 0.0, 1), (1, 0.1, 1), (1, 0.1, 4)],
    ids=["sde", "one_step", "one_step_blocks"],
)
def test_grpo_raises_a_simple_known_reward_from_a_fixed_seed(num_steps, final_noise, cell):
    torch.manual_seed(0)
    model = policy()
    ctx = context(G)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def evaluate() -> float:
        with torch.no_grad():
            run = rollout(
                model, ctx, num_steps=num_steps, generator=torch.Generator().manual_seed(99)
            )
        return float(brightness_in_mask(run.final)["total"].mean())

    start = evaluate()
    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(30):
        stats = grpo_iteration(
            model,
            optimizer,
            [CandidateBatch(ctx, [0] * G, brightness_in_mask)],
            num_steps=num_steps,
            final_noise=final_noise,
            final_noise_cell=cell,
            train_steps=3,
            clip_range=0.2,
            beta=0.0,
            generator=generator,
            group_size=G,  # one start noise: only the policy's exploration tells them apart
        )
        history.append(stats["reward/total_mean"])
        assert 0 <= stats["clip_fraction"] <= 1 and abs(stats["advantage_mean"]) < 1e-4
    end = evaluate()
    assert end > start + 0.5, (start, end)  # measured: 0.12 -> 1.03, 0.05 -> 1.36, 0.05 -> 1.52
    assert sum(history[-5:]) / 5 > sum(history[:5]) / 5


def test_the_kl_term_measures_distance_to_the_adapter_free_reference():
    model = policy()
    ctx = context(G)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    first = grpo_iteration(
        model,
        optimizer,
        [CandidateBatch(ctx, [0] * G, brightness_in_mask)],
        num_steps=3,
        train_steps=2,
        beta=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert first["kl"] == 0.0  # B = 0 at the start: policy == reference
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    moved = grpo_iteration(
        model,
        optimizer,
        [CandidateBatch(ctx, [0] * G, brightness_in_mask)],
        num_steps=3,
        train_steps=2,
        beta=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert moved["kl"] > 0


def test_a_saved_adapter_loads_onto_a_fresh_sft_model_with_the_same_outputs(tmp_path):
    from viva_pipelines.model.codecs import PixelCodec
    from viva_pipelines.model.pipeline import ModelSpec, VivaEditPipeline
    from viva_pipelines.model.transformer import predict_velocity

    trained = policy(seed=3)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    trained.save_lora_adapter(str(tmp_path))
    fresh = build_transformer(tiny_transformer_config(C, D), seed=3)
    pipeline = VivaEditPipeline(fresh, PixelCodec(), ModelSpec(instructor={}))
    ctx = context(2)
    x, sigma = torch.randn(2, C, 1, 8, 8), torch.tensor(0.4)

    def velocity(model: torch.nn.Module) -> torch.Tensor:
        c = ctx.cond
        return predict_velocity(model, x, sigma, ctx.source, None, c.tokens, c.mask, c.pooled)

    with torch.no_grad():
        before = velocity(fresh)
        pipeline.load_lora(tmp_path)
        torch.testing.assert_close(velocity(fresh), velocity(trained))
    assert not torch.allclose(before, velocity(fresh))


def test_grpo_run_over_a_trained_sft_model_resumes_to_the_same_adapter(tmp_path):
    """The whole run: SFT model dir + cache, tiny CLIP rewards, LoRA, checkpoints; a run that
    lost its last checkpoint resumes and ends with the adapter of an uninterrupted run."""
    from safetensors.torch import load as load_safetensors

    from tests.sft_fixtures import prepare_grpo_inputs, tiny_grpo_config
    from viva_pipelines.storage import Storage
    from viva_pipelines.train.distributed import DistContext
    from viva_pipelines.train.grpo import train_grpo
    from viva_pipelines.train.reporting import Reporter

    root = tmp_path / "root"
    storage = Storage(str(root))
    cache = prepare_grpo_inputs(root)
    cpu = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with Reporter(enabled=False, tracking_uri=None, run_id=None) as report:

        def run(prefix: str) -> dict:
            config = tiny_grpo_config(
                root,
                prefix,
                cache,
                optim={"iterations": 4, "accumulate": 2},
                eval={"every": 2, "groups": 2},
                runtime={"checkpoint_every": 2},
            )
            return train_grpo(config, cpu, report)

        straight = run("straight")
        run("interrupted")
        storage.delete("interrupted/checkpoints/step-00000004")
        resumed = run("interrupted")
    assert resumed["resumed_from"] == 2 and straight["resumed_from"] == 0
    assert set(straight) >= {"eval/total_first", "eval/instruction_last", "reward/total_mean_last"}
    adapters = [
        load_safetensors(storage.read_bytes(f"{p}/lora/pytorch_lora_weights.safetensors"))
        for p in ("straight", "interrupted")
    ]
    assert adapters[0].keys() == adapters[1].keys() and len(adapters[0]) > 0
    for name in adapters[0]:
        assert torch.equal(adapters[0][name], adapters[1][name]), name
    assert any(t.abs().sum() > 0 for n, t in adapters[0].items() if "lora_B" in n)  # it trained
    curves = storage.read_bytes("straight/reward_curves.png")  # the run's curves, as a picture
    assert curves.startswith(b"\x89PNG") and straight["reward_curves_uri"].endswith(
        "straight/reward_curves.png"
    )
    assert (
        json.loads(storage.read_bytes("straight/lora/viva_adapter.json"))["base_model"]
        == "sft/model"
    )


def test_checkpointing_changes_memory_not_the_adapter_and_bf16_trains(tmp_path):
    """Gradient checkpointing recomputes the same activations: the same adapter. bf16
    autocast (rollouts and updates alike) still trains one, with finite rewards."""
    from safetensors.torch import load as load_safetensors

    from tests.sft_fixtures import prepare_grpo_inputs, tiny_grpo_config
    from viva_pipelines.storage import Storage
    from viva_pipelines.train.distributed import DistContext
    from viva_pipelines.train.grpo import train_grpo
    from viva_pipelines.train.reporting import Reporter

    root = tmp_path / "root"
    storage = Storage(str(root))
    cache = prepare_grpo_inputs(root)
    cpu = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    runs = {
        "plain": {"gradient_checkpointing": "off", "mixed_precision": "no"},
        "checkpointed": {"gradient_checkpointing": "on", "mixed_precision": "no"},
        "bf16": {"gradient_checkpointing": "off", "mixed_precision": "bf16"},
    }
    summaries = {}
    with Reporter(enabled=False, tracking_uri=None, run_id=None) as report:
        for prefix, runtime in runs.items():
            config = tiny_grpo_config(root, prefix, cache, optim={"iterations": 2}, runtime=runtime)
            summaries[prefix] = train_grpo(config, cpu, report)
    adapters = {
        p: load_safetensors(storage.read_bytes(f"{p}/lora/pytorch_lora_weights.safetensors"))
        for p in runs
    }
    for name, tensor in adapters["plain"].items():
        assert torch.allclose(adapters["checkpointed"][name], tensor, atol=1e-6), name
    assert any(t.abs().sum() > 0 for n, t in adapters["bf16"].items() if "lora_B" in n)
    assert all(math.isfinite(v) for v in summaries["bf16"].values() if isinstance(v, float))
