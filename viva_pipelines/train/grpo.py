"""Edit-GRPO (docs/method.md): reward post-training of the SFT model through a LoRA.

One iteration: for each (source video, instruction) group draw G candidates in one batch with
the stochastic sampler (:func:`rollout`, keeping every step's latents and log-probs), score
them (any ``reward_fn``; the VIVA rewards live in ``viva_pipelines.rewards``), turn rewards
into group advantages, and take PPO-clipped steps on a subset of the denoising steps with a KL
term to the reference policy, which is the same network with the adapter disabled.
The maths is in ``grpo_math`` and ``model.sde``; this module only wires it together.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viva_pipelines.model.clips import to_uint8_frames
from viva_pipelines.model.flow_matching import (
    PLAIN_GATE,
    GateReading,
    guided_velocity,
    inference_sigmas,
)
from viva_pipelines.model.pipeline import Conditions, VivaEditPipeline
from viva_pipelines.model.sde import final_step_with_logprob, sde_step_with_logprob
from viva_pipelines.model.transformer import predict_velocity
from viva_pipelines.previews import curves
from viva_pipelines.rewards.clip_rewards import ClipScorer, edit_rewards
from viva_pipelines.rewards.models import load_scorers
from viva_pipelines.storage import Storage
from viva_pipelines.train.checkpoint import load_latest_checkpoint, save_checkpoint
from viva_pipelines.train.config import GrpoConfig, RewardWeights
from viva_pipelines.train.distributed import (
    DistContext,
    apply_gradient_checkpointing,
    precision,
)
from viva_pipelines.train.grpo_math import group_advantages, kl_to_reference, ppo_clipped_loss
from viva_pipelines.train.reporting import Reporter, run_entry_point
from viva_pipelines.train.runs import lora_key, reward_curves_key, summary_key
from viva_pipelines.train.sft import summarise
from viva_pipelines.train.sft_data import (
    CachedSamples,
    collate,
    load_unconditional,
    pad_tokens,
    step_generator,
)

#: Written beside the adapter: which SFT model it was trained on.
ADAPTER_BASE_FILE = "viva_adapter.json"

#: The projections of HunyuanVideo's attention and MLPs (dual- and single-stream blocks).
DEFAULT_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
)  # fmt: skip


def add_lora(
    transformer: torch.nn.Module,
    *,
    rank: int,
    alpha: float,
    targets: Sequence[str] = DEFAULT_LORA_TARGETS,
    seed: int = 0,
) -> torch.nn.Module:
    """Freeze the DiT and attach a peft LoRA (``transformer.add_adapter``) of ``rank`` and
    ``alpha`` (``grpo.lora`` settings); only the adapter trains. LoRA's B matrices start at
    zero, so the policy starts as the SFT model."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer.add_adapter(
            LoraConfig(
                r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True
            )
        )
    return transformer


@dataclass
class Rollout:
    """G candidates of one or more groups, sampled together.

    ``latents``: ``[S + 1, B, C, t, h, w]`` (``latents[0]`` is the noise, ``latents[S]`` the
    result); ``sigmas``: ``[S + 1]``; ``sde_steps``: the denoising steps that were sampled
    stochastically, and ``log_probs``: ``[len(sde_steps), B]``, their log-probs under the
    sampling policy (the other steps are deterministic and carry none).
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    sde_steps: list[int]

    @property
    def final(self) -> torch.Tensor:
        return self.latents[-1]


@dataclass
class EditContext:
    """What the policy is conditioned on, per candidate: source latents ``[B, C, t, h, w]``,
    reference latents ``[B, C, 1, h, w]`` or ``None``, conditional and unconditional tokens."""

    source: torch.Tensor
    reference: torch.Tensor | None
    cond: Conditions
    uncond: Conditions
    guidance_scale: float = 1.0
    embedded_guidance: float | None = None
    prediction: str = "velocity"
    gate_reading: GateReading = PLAIN_GATE  # the model's own (its sampling defaults)


def guided_step_velocity(
    transformer: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, ctx: EditContext
) -> torch.Tensor:
    """The classifier-free-guided velocity the sampler follows (one batched model call when
    guidance is on; the conditional branch alone when ``guidance_scale == 1``)."""
    if ctx.guidance_scale == 1.0:
        c = ctx.cond
        return predict_velocity(
            transformer,
            x,
            sigma,
            ctx.source,
            ctx.reference,
            c.tokens,
            c.mask,
            c.pooled,
            embedded_guidance=ctx.embedded_guidance,
            prediction=ctx.prediction,
            gate_reading=ctx.gate_reading,
        )
    both = Conditions.cat([ctx.uncond, ctx.cond])
    no_reference = None if ctx.reference is None else torch.zeros_like(ctx.reference)
    v_uncond, v_cond = predict_velocity(
        transformer,
        torch.cat([x, x]),
        sigma,
        torch.cat([ctx.source, ctx.source]),
        None if ctx.reference is None else torch.cat([no_reference, ctx.reference]),
        both.tokens,
        both.mask,
        both.pooled,
        embedded_guidance=ctx.embedded_guidance,
        prediction=ctx.prediction,
        gate_reading=ctx.gate_reading,
    ).chunk(2)
    return guided_velocity(v_uncond, v_cond, ctx.guidance_scale)


def policy_step(
    v: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    x: torch.Tensor,
    *,
    noise_level: float,
    final_noise: float,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
    final_noise_cell: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stochastic step of the rollout policy: Flow-GRPO's SDE (``noise_level``), or, to
    ``sigma = 0``, Gaussian exploration of scale ``final_noise`` around the ODE's end point,
    drawn per ``final_noise_cell`` block (:mod:`~viva_pipelines.model.sde`). Returns
    ``(x_next, log_prob, mean, std)``."""
    if sigma_next > 0:
        return sde_step_with_logprob(v, sigma, sigma_next, x, noise_level, generator, prev_sample)
    return final_step_with_logprob(
        v, sigma, x, final_noise, generator, prev_sample, final_noise_cell
    )


def explored_steps(num_steps: int, final_noise: float) -> int:
    """How many of a rollout's steps can be stochastic: all but the last, which goes to
    ``sigma = 0``, unless that one is explored too (``final_noise > 0``)."""
    return num_steps if final_noise > 0 else num_steps - 1


@torch.no_grad()
def rollout(
    transformer: torch.nn.Module,
    ctx: EditContext,
    *,
    num_steps: int,
    shift: float = 1.0,
    noise_level: float = 0.7,
    final_noise: float = 0.0,
    generator: torch.Generator | None = None,
    group_size: int = 1,
    sde_steps: Sequence[int] | None = None,
    final_noise_cell: int = 1,
) -> Rollout:
    """Sample every candidate, keeping per-step latents and the log-probs of the stochastic
    steps. ``sde_steps``: which denoising steps are stochastic (default: all but the last,
    which goes to sigma = 0 and has no SDE, and the last too when ``final_noise > 0``, see
    :func:`policy_step`); the others are Euler steps of the ODE, so exploration and credit
    assignment stay inside that window (MixGRPO); an empty one samples the ODE, as inference
    does. A one-step rollout (``num_steps=1``, ``final_noise > 0``) is the policy of a sampler
    that edits in one step. ``group_size``:
    consecutive candidates of that many start from the same noise, so what separates a
    group's candidates is the policy's own exploration, not a luckier starting point."""
    sigmas = inference_sigmas(num_steps, shift).to(ctx.source.device)
    batch = ctx.source.shape[0]
    if batch % group_size:
        raise ValueError(f"{batch} candidates do not split into groups of {group_size}")
    noise = torch.randn((batch // group_size, *ctx.source.shape[1:]), generator=generator)
    x = noise.repeat_interleave(group_size, dim=0).to(ctx.source)
    explorable = explored_steps(num_steps, final_noise)
    stochastic = set(range(explorable) if sde_steps is None else sde_steps)
    latents, log_probs, taken = [x], [], []
    for i in range(num_steps):
        v = guided_step_velocity(transformer, x, sigmas[i], ctx)
        if i in stochastic and i < explorable:
            x, log_prob, _, _ = policy_step(
                v,
                sigmas[i],
                sigmas[i + 1],
                x,
                noise_level=noise_level,
                final_noise=final_noise,
                generator=generator,
                final_noise_cell=final_noise_cell,
            )
            log_probs.append(log_prob)
            taken.append(i)
        else:
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        latents.append(x)
    stacked = torch.stack(log_probs) if log_probs else x.new_zeros(0, batch)
    return Rollout(torch.stack(latents), stacked, sigmas, taken)


def sde_window(
    num_stochastic: int, size: int | None, generator: torch.Generator
) -> list[int] | None:
    """``size`` consecutive denoising steps at a random place among the ``num_stochastic``
    that can be (:func:`explored_steps`), drawn anew each iteration; None (every step) when
    ``size`` is None or covers them all."""
    if size is None or size >= num_stochastic:
        return None
    start = int(torch.randint(num_stochastic - size + 1, (), generator=generator))
    return list(range(start, start + size))


def trainable_steps(num_stochastic: int, count: int, generator: torch.Generator) -> list[int]:
    """Which of the stochastic steps to train on this iteration (a random subset, as
    Flow-GRPO does, to save compute)."""
    if count >= num_stochastic:
        return list(range(num_stochastic))
    return sorted(torch.randperm(num_stochastic, generator=generator)[:count].tolist())


def grpo_loss_for_step(
    transformer: torch.nn.Module,
    run: Rollout,
    step: int,
    ctx: EditContext,
    advantages: torch.Tensor,
    *,
    noise_level: float,
    clip_range: float,
    beta: float,
    final_noise: float = 0.0,
    final_noise_cell: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The GRPO objective of the ``step``-th stochastic step (``run.sde_steps[step]``) for all
    candidates: ``(loss, policy_loss, kl, clip_fraction)``; only ``loss`` carries gradients.

    The policy re-scores the stored transition ``latents[i] -> latents[i + 1]``; the
    reference (adapter disabled, no grad) gives the mean the KL is measured against.
    """
    i = run.sde_steps[step]
    x, x_next = run.latents[i], run.latents[i + 1]
    sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
    v = guided_step_velocity(transformer, x, sigma, ctx)
    explore = {
        "noise_level": noise_level,
        "final_noise": final_noise,
        "final_noise_cell": final_noise_cell,
        "prev_sample": x_next,
    }
    _, log_prob, mean, std = policy_step(v, sigma, sigma_next, x, **explore)
    policy_loss, clip_fraction = ppo_clipped_loss(
        log_prob, run.log_probs[step], advantages, clip_range
    )
    kl = torch.zeros(())
    if beta > 0:
        with torch.no_grad():
            transformer.disable_adapters()
            try:
                v_ref = guided_step_velocity(transformer, x, sigma, ctx)
            finally:
                transformer.enable_adapters()
            _, _, ref_mean, _ = policy_step(v_ref, sigma, sigma_next, x, **explore)
        kl = kl_to_reference(mean, ref_mean, std).mean()
    return policy_loss + beta * kl, policy_loss.detach(), kl.detach(), clip_fraction


@dataclass
class CandidateBatch:
    """Candidates sampled together: their context, group keys (``groups[i]`` is candidate
    i's (source video, instruction) key) and ``reward_fn(final_latents) -> {"total": [B],
    component: [B], ...}``."""

    ctx: EditContext
    groups: Sequence[object]
    reward_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]]


def grpo_iteration(
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[CandidateBatch],
    *,
    num_steps: int,
    train_steps: int,
    shift: float = 1.0,
    noise_level: float = 0.7,
    final_noise: float = 0.0,
    clip_range: float = 1e-3,
    beta: float = 0.01,
    grad_clip: float = 1.0,
    generator: torch.Generator | None = None,
    group_size: int = 1,
    window: int | None = None,
    min_group_std: float = 0.0,
    final_noise_cell: int = 1,
) -> dict[str, float]:
    """One Edit-GRPO iteration: for each batch (gradient accumulation), a rollout (groups of
    ``group_size`` from one noise, stochastic only in a ``window`` of steps, see
    :func:`sde_window`), rewards, group advantages (groups whose rewards spread less than
    ``min_group_std`` carry none) and the losses of a random subset of its stochastic steps,
    backpropagated; then one clipped optimizer step. Returns the iteration's statistics."""
    generator = generator or torch.Generator()
    scale = 1.0 / len(batches)
    totals = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
    rewards: dict[str, list[torch.Tensor]] = {}
    advantages = []
    for batch in batches:
        run = rollout(
            transformer,
            batch.ctx,
            num_steps=num_steps,
            shift=shift,
            noise_level=noise_level,
            final_noise=final_noise,
            generator=generator,
            group_size=group_size,
            sde_steps=sde_window(explored_steps(num_steps, final_noise), window, generator),
            final_noise_cell=final_noise_cell,
        )
        batch_rewards = batch.reward_fn(run.final)
        batch_advantages = group_advantages(
            batch_rewards["total"], batch.groups, min_std=min_group_std
        )
        steps = trainable_steps(run.log_probs.shape[0], train_steps, generator)
        for step in steps:
            loss, policy_loss, kl, clip_fraction = grpo_loss_for_step(
                transformer,
                run,
                step,
                batch.ctx,
                batch_advantages.to(run.final.device),
                noise_level=noise_level,
                final_noise=final_noise,
                final_noise_cell=final_noise_cell,
                clip_range=clip_range,
                beta=beta,
            )
            (loss * scale / len(steps)).backward()
            for name, value in zip(totals, (loss, policy_loss, kl, clip_fraction), strict=True):
                totals[name] += float(value.detach()) * scale / len(steps)
        for name, values in batch_rewards.items():
            rewards.setdefault(name, []).append(values.float().cpu())
        advantages.append(batch_advantages)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    stats = {**totals, "grad_norm": float(grad_norm)}
    for name, parts in rewards.items():
        values = torch.cat(parts)
        stats[f"reward/{name}_mean"] = float(values.mean())
        stats[f"reward/{name}_std"] = float(values.std(unbiased=False))
    all_advantages = torch.cat(advantages)
    stats.update(
        advantage_mean=float(all_advantages.mean()),
        advantage_abs_mean=float(all_advantages.abs().mean()),
        advantage_max=float(all_advantages.max()),
    )
    return stats


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Groups:
    """(source video, instruction) groups from the SFT cache, with their captions."""

    items: list[dict[str, torch.Tensor]]
    source_captions: list[str]
    target_captions: list[str]
    keys: list[str]


def load_groups(storage: Storage, config: GrpoConfig, split: str) -> Groups:
    index = storage.read_parquet(f"{config.sft_cache}/index.parquet")
    manifest = storage.read_parquet(config.data.manifest_key)
    rows = index[(index["modality"] == "video") & (index["split"] == split)].merge(
        manifest[["sample_id", "source_caption", "target_caption"]], on="sample_id"
    )
    if rows.empty:
        raise ValueError(f"{config.sft_cache}: no {split} video samples to form GRPO groups")
    samples = CachedSamples(storage, rows)
    return Groups(
        items=[samples[i] for i in range(len(rows))],
        source_captions=rows["source_caption"].fillna("").tolist(),
        target_captions=rows["target_caption"].fillna("").tolist(),
        keys=rows["sample_id"].tolist(),
    )


def group_context(
    groups: Groups,
    picks: Sequence[int],
    group_size: int,
    unconditional: torch.Tensor,
    pipeline: VivaEditPipeline,
    guidance_scale: float,
    device: torch.device,
) -> EditContext:
    """Every picked group repeated ``group_size`` times, as one batch of candidates."""
    items = [groups.items[p] for p in picks for _ in range(group_size)]
    keep = torch.zeros(len(items), dtype=torch.bool)
    batch = collate(items, unconditional, keep, keep).to(device)
    pooled = pipeline.spec.pooled
    empty, empty_mask = pad_tokens([unconditional] * len(items))
    has_reference = any(bool(i["has_reference"]) for i in items)
    return EditContext(
        source=batch.source,
        reference=batch.reference if has_reference else None,
        cond=Conditions.from_tokens(batch.tokens, batch.token_mask, pooled),
        uncond=Conditions.from_tokens(empty.to(device), empty_mask.to(device), pooled),
        guidance_scale=guidance_scale,
        embedded_guidance=pipeline.spec.embedded_guidance,
        prediction=pipeline.spec.prediction,
        gate_reading=pipeline.spec.sampling.gate_reading,
    )


def make_reward_fn(
    pipeline: VivaEditPipeline,
    clip: ClipScorer,
    pick: ClipScorer,
    weights: RewardWeights,
    ctx: EditContext,
    source_captions: list[str],
    target_captions: list[str],
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Decode the candidates and score them against their sources and captions."""
    sources = np.stack([to_uint8_frames(v) for v in pipeline.codec.decode(ctx.source)])

    def reward_fn(latents: torch.Tensor) -> dict[str, torch.Tensor]:
        edited = np.stack([to_uint8_frames(v) for v in pipeline.codec.decode(latents)])
        return edit_rewards(clip, pick, sources, edited, source_captions, target_captions, weights)

    return reward_fn


def train_grpo(config: GrpoConfig, ctx: DistContext, report: Reporter) -> dict[str, Any]:
    """Run (or resume) Edit-GRPO; rank 0 writes the adapter under ``{output_prefix}/lora``."""
    runtime = config.runtime
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if ctx.active:
        raise ValueError("Edit-GRPO runs as one process per node for now (nproc_per_node: 1)")
    storage = Storage(
        config.data.storage_root,
        endpoint_url=config.data.endpoint_url,
        region_name=config.data.region_name,
    )
    with tempfile.TemporaryDirectory(prefix="viva-grpo-") as tmp:
        model_dir = storage.local_dir(config.sft_model, Path(tmp, "sft"))
        pipeline = VivaEditPipeline.from_pretrained(model_dir, device=ctx.device)
        clip, pick = load_scorers(storage, storage.read_json(config.rewards_record), Path(tmp))
        with precision(runtime, ctx.device)():  # rollouts and updates alike: one policy
            return _train(config, ctx, report, storage, pipeline, clip, pick, model_dir)


def _train(config, ctx, report, storage, pipeline, clip, pick, model_dir) -> dict[str, Any]:
    runtime, sampling, optim = config.runtime, config.sampling, config.optim
    weights = config.reward_weights
    train_groups = load_groups(storage, config, "train")
    val_groups = load_groups(storage, config, "val")
    unconditional = load_unconditional(storage, config.sft_cache)
    targets = config.lora.targets or DEFAULT_LORA_TARGETS
    transformer = add_lora(
        pipeline.transformer,
        rank=config.lora.rank,
        alpha=config.lora.alpha,
        targets=targets,
        seed=runtime.seed,
    )
    apply_gradient_checkpointing(transformer, runtime)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    resumed = load_latest_checkpoint(
        storage, config.output_prefix, transformer, optimizer, scheduler
    )
    start = resumed["step"] if resumed else 0
    history: dict[str, list] = dict(resumed.get("history", {})) if resumed else {}
    report.info(
        f"Edit-GRPO: {len(train_groups.keys)} train groups, G={sampling.group_size}, "
        f"{sum(p.numel() for p in trainable) / 1e3:.1f}k LoRA parameters, iterations "
        f"{start}->{optim.iterations}" + (" (resumed)" if resumed else "")
    )

    def batch_for(groups: Groups, picks: list[int]):
        ctx_ = group_context(
            groups,
            picks,
            sampling.group_size,
            unconditional,
            pipeline,
            sampling.guidance_scale,
            ctx.device,
        )
        captions = [
            [getattr(groups, f)[p] for p in picks for _ in range(sampling.group_size)]
            for f in ("source_captions", "target_captions")
        ]
        return ctx_, make_reward_fn(pipeline, clip, pick, weights, ctx_, *captions)

    def evaluate(iteration: int) -> dict[str, float]:
        """Mean reward of held-out groups, sampled as inference does (the ODE, no exploration
        noise) from fixed seeds (the same every time)."""
        picks = list(range(min(config.eval.groups, len(val_groups.keys))))
        ctx_, reward_fn = batch_for(val_groups, picks)
        run = rollout(
            transformer,
            ctx_,
            num_steps=sampling.num_steps,
            shift=sampling.shift,
            generator=torch.Generator().manual_seed(runtime.seed + 7919),
            sde_steps=[],
        )
        rewards = reward_fn(run.final)
        metrics = {f"eval/{name}": float(v.mean()) for name, v in rewards.items()}
        report.metrics(iteration, metrics)
        for name, value in metrics.items():
            history.setdefault(name, []).append([iteration, value])
        report.info(
            f"iteration {iteration}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )
        return metrics

    if start == 0:
        evaluate(0)
    for iteration in range(start, optim.iterations):
        generator = step_generator(runtime.seed, iteration)
        batches = []
        for _ in range(optim.accumulate):
            picks = torch.randint(
                len(train_groups.keys), (optim.groups_per_iteration,), generator=generator
            ).tolist()
            ctx_, reward_fn = batch_for(train_groups, picks)
            keys = [p for p in picks for _ in range(sampling.group_size)]
            batches.append(CandidateBatch(ctx_, keys, reward_fn))
        stats = grpo_iteration(
            transformer,
            optimizer,
            batches,
            num_steps=sampling.num_steps,
            train_steps=sampling.train_steps,
            shift=sampling.shift,
            noise_level=sampling.noise_level,
            final_noise=sampling.final_noise,
            clip_range=optim.clip_range,
            beta=optim.beta,
            grad_clip=optim.grad_clip,
            generator=generator,
            group_size=sampling.group_size if sampling.same_noise else 1,
            window=sampling.sde_window,
            min_group_std=optim.min_group_std,
            final_noise_cell=sampling.final_noise_cell,
        )
        done = iteration + 1
        report.metrics(done, stats)
        history.setdefault("reward/total_mean", []).append([done, stats["reward/total_mean"]])
        report.info(
            f"iteration {done}/{optim.iterations}: reward {stats['reward/total_mean']:.4f}, "
            f"kl {stats['kl']:.2e}, clip {stats['clip_fraction']:.2f}"
        )
        if done % config.eval.every == 0 or done == optim.iterations:
            evaluate(done)
        if done % runtime.checkpoint_every == 0 or done == optim.iterations:
            save_checkpoint(
                storage,
                config.output_prefix,
                done,
                transformer,
                optimizer,
                scheduler,
                is_main=ctx.is_main,
                extra={"history": history},
                keep=runtime.keep_checkpoints,
            )
    summary = summarise(history, config.optim.iterations, start)
    summary["lora_uri"] = save_adapter(storage, config, transformer)
    summary["reward_curves_uri"] = save_reward_curves(storage, config, history, report)
    storage.write_json(summary_key(config.output_prefix), summary)
    return summary


def save_reward_curves(
    storage: Storage, config: GrpoConfig, history: dict[str, list], report: Reporter
) -> str:
    """The run's rewards as a PNG (the training batches' mean every iteration, the held-out
    groups' components every evaluation), in storage and in the MLflow run."""
    key = reward_curves_key(config.output_prefix)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, Path(key).name)
        local.write_bytes(
            curves(history, "Edit-GRPO rewards: training batches and held-out groups")
        )
        storage.put_file(local, key)
        report.artifact(local)
    return storage.uri(key)


def save_adapter(storage: Storage, config: GrpoConfig, transformer: torch.nn.Module) -> str:
    """The LoRA (peft format, ``save_lora_adapter``) with a note of its base model."""
    prefix = lora_key(config.output_prefix)
    with tempfile.TemporaryDirectory() as tmp:
        transformer.save_lora_adapter(tmp)
        Path(tmp, ADAPTER_BASE_FILE).write_text(
            json.dumps({"base_model": config.sft_model, "config": config.fingerprint()}, indent=1)
        )
        return storage.put_dir(tmp, prefix)


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(
        argv,
        description="VIVA Edit-GRPO (run under torchrun)",
        load_config=GrpoConfig.from_yaml,
        train=train_grpo,
    )


if __name__ == "__main__":
    raise SystemExit(main())
