"""Edit-GRPO iteration cost: where one iteration's time goes, and what a batched rollout buys.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/grpo_step.py [--iterations 5] [--group-size 4]
        [--groups 2] [--num-steps 8] [--train-steps 3] [--threads N] [--device cpu|cuda]

The setup is the demo's Edit-GRPO (the embedded profile's grpo settings): the tiny DiT
(tiny_transformer_config(12, 64): 2 dual- + 2 single-stream blocks, 4 heads of 32, patch 2)
with a peft LoRA of rank 8 (alpha 8) on the default targets (grpo.add_lora), clips of 4 frames
of 32x32 through the pixel codec with factor 2 (latents [B, 12, 4, 16, 16], 256 video tokens),
60 condition tokens of 64-d per candidate and 16 unconditional ones (random stand-ins for the
instructor's cached tokens; no reference image), --groups groups of --group-size candidates
(B = groups x group size, 2B rows per model call with guidance 1.5), --num-steps sampling
steps (shift 3, noise level 0.7), --train-steps trained steps, clip range 1e-3, KL beta 0.01,
AdamW lr 1e-3, grad clip 1. The rewards are the trainer's own (grpo.make_reward_fn on a
VivaEditPipeline with that codec): PixelCodec decode + edit_rewards (R_IF, R_SP, PickScore)
with a tiny CLIP (embedded.clip.build_tiny_clip in a temporary directory, on a few
captions, untrained: the cost is the same) used as both the CLIP and the PickScore model.

1. Time split of one GRPO iteration. The phases of grpo.grpo_iteration, timed by calling the
   public functions it calls, in its order (no copy of its body):
   - rollout: grpo.rollout, all B candidates in one batch with per-step latents + log-probs;
   - reward: the reward function (decode + CLIP rewards);
   - advantages: grpo_math.group_advantages + grpo.trainable_steps;
   - update: for each trained step grpo.grpo_loss_for_step (policy forward with grad, the
     reference forward with the adapter disabled, PPO-clipped loss + KL), backward of
     loss / steps; then clip_grad_norm_ over the LoRA, AdamW step, zero_grad.
   Interleaved with it, one full grpo.grpo_iteration call per iteration, to show the parts add
   up. Reported: median ms over --iterations iterations after one warm-up iteration, and the
   share of the median sum of the phases. Medians of the phases need not add up to the
   median of their sum exactly. On CUDA each phase boundary synchronises.

2. Batched vs one-candidate-at-a-time rollout. The same B candidates (same steps, guidance,
   shift, noise level) sampled by one grpo.rollout call on the whole batch, or by a loop of B
   grpo.rollout calls of batch 1 (each candidate's slice of the context). Interleaved call by
   call; median and fastest ms per iteration's rollout over --iterations after one warm-up,
   ms per candidate, and the speed-up of the batched rollout.

On a busy CPU, more torch threads than free cores make the timings swing by several times
(threads spin waiting for each other): pass --threads 1 there; the header line gives the load.
On CUDA the rollouts draw from the global RNG (generator=None): grpo.rollout's SDE steps
draw their noise on the latents' device, which a CPU torch.Generator cannot feed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from bench_common import machine, ms, note, sync, table

from viva_pipelines.embedded.clip import build_tiny_clip
from viva_pipelines.model.codecs import PixelCodec
from viva_pipelines.model.pipeline import Conditions, ModelSpec, VivaEditPipeline
from viva_pipelines.model.transformer import build_transformer, tiny_transformer_config
from viva_pipelines.rewards.clip_rewards import ClipScorer
from viva_pipelines.train.config import RewardWeights
from viva_pipelines.train.grpo import (
    CandidateBatch,
    EditContext,
    Rollout,
    add_lora,
    grpo_iteration,
    grpo_loss_for_step,
    make_reward_fn,
    rollout,
    trainable_steps,
)
from viva_pipelines.train.grpo_math import group_advantages

# The demo's Edit-GRPO settings (the embedded profile's grpo section).
LORA_RANK, LORA_ALPHA = 8, 8.0
SHIFT, NOISE_LEVEL, GUIDANCE = 3.0, 0.7, 1.5
LR, CLIP_RANGE, BETA, GRAD_CLIP = 1e-3, 1e-3, 0.01, 1.0
# The demo's clips and condition tokens.
FRAMES, SIZE, CODEC_FACTOR = 4, 32, 2
TEXT_DIM, COND_TOKENS, UNCOND_TOKENS = 64, 60, 16
CAPTIONS = [
    ("a red ball rolls across a grey floor", "a blue ball rolls across a grey floor"),
    ("a green cube on a wooden table", "a green cube on a wooden table in the snow"),
    ("a yellow car drives down a street", "a yellow car drives down a street at night"),
    ("a white cat sits on a sofa", "a white cat with a red hat sits on a sofa"),
]


# -- reporting ------------------------------------------------------------------------------


class Split:
    """Wall seconds per phase and iteration: ``start()`` an iteration, then ``mark(name)``
    after each phase; a phase marked several times in an iteration adds up. On CUDA each mark
    synchronises first."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.iterations: list[dict[str, float]] = []
        self._last = 0.0

    def start(self) -> None:
        sync(self.device)
        self.iterations.append({})
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        current = self.iterations[-1]
        current[name] = current.get(name, 0.0) + now - self._last
        self._last = now

    def medians(self, skip: int) -> dict[str, float]:
        """Median per phase and of the iteration's total, the first ``skip`` left out."""
        kept = self.iterations[skip:]
        out = {name: statistics.median(it[name] for it in kept) for name in kept[0]}
        out["total"] = statistics.median(sum(it.values()) for it in kept)
        return out


def timed(device: torch.device, run: Callable[[], object]) -> float:
    sync(device)
    started = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - started


# -- the setup --------------------------------------------------------------------------------


@dataclass
class Setup:
    device: torch.device
    transformer: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ctx: EditContext
    keys: list[int]  # each candidate's group
    reward_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    num_steps: int
    train_steps: int
    lora_parameters: int


def edit_context(
    codec: PixelCodec, groups: int, group_size: int, device: torch.device
) -> EditContext:
    """Each group's source latents and condition tokens, repeated ``group_size`` times (the
    layout of grpo.group_context); random stand-ins for the cached ones."""
    g = torch.Generator().manual_seed(0)
    video = torch.rand(groups, 3, FRAMES, SIZE, SIZE, generator=g) * 2 - 1
    source = codec.encode(video).repeat_interleave(group_size, 0)
    tokens = torch.randn(groups, COND_TOKENS, TEXT_DIM, generator=g).repeat_interleave(
        group_size, 0
    )
    batch = groups * group_size
    empty = torch.randn(1, UNCOND_TOKENS, TEXT_DIM, generator=g).expand(batch, -1, -1)
    ones = torch.ones(batch, COND_TOKENS, dtype=torch.long)
    return EditContext(
        source=source.to(device),
        reference=None,
        cond=Conditions.from_tokens(tokens.to(device), ones.to(device), "instructor_mean"),
        uncond=Conditions.from_tokens(
            empty.contiguous().to(device), ones[:, :UNCOND_TOKENS].to(device), "instructor_mean"
        ),
        guidance_scale=GUIDANCE,
    )


def prepare(args: argparse.Namespace, device: torch.device, workdir: Path) -> Setup:
    with contextlib.suppress(ImportError):  # no progress bars among the notes
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    codec = PixelCodec(CODEC_FACTOR)
    note("building the tiny DiT + LoRA")
    transformer = build_transformer(
        tiny_transformer_config(codec.latent_channels, TEXT_DIM), seed=0
    ).to(device)
    pipeline = VivaEditPipeline(transformer, codec, ModelSpec(instructor={}))
    transformer = add_lora(pipeline.transformer, rank=LORA_RANK, alpha=LORA_ALPHA)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR)
    ctx = edit_context(codec, args.groups, args.group_size, device)

    note("building the tiny CLIP")
    texts = [caption for pair in CAPTIONS for caption in pair]
    clip = ClipScorer(build_tiny_clip(workdir / "clip", texts), device=device)
    picks = [i % len(CAPTIONS) for i in range(args.groups) for _ in range(args.group_size)]
    reward_fn = make_reward_fn(
        pipeline,
        clip,
        clip,
        RewardWeights(),
        ctx,
        [CAPTIONS[p][0] for p in picks],
        [CAPTIONS[p][1] for p in picks],
    )
    return Setup(
        device=device,
        transformer=transformer,
        optimizer=optimizer,
        ctx=ctx,
        keys=[i for i in range(args.groups) for _ in range(args.group_size)],
        reward_fn=reward_fn,
        num_steps=args.num_steps,
        train_steps=args.train_steps,
        lora_parameters=sum(p.numel() for p in trainable),
    )


def generator_for(setup: Setup, seed: int) -> torch.Generator | None:
    """A seeded CPU generator, or None on CUDA (see the module docstring)."""
    return None if setup.device.type == "cuda" else torch.Generator().manual_seed(seed)


def sample(setup: Setup, ctx: EditContext, generator: torch.Generator | None) -> Rollout:
    return rollout(
        setup.transformer,
        ctx,
        num_steps=setup.num_steps,
        shift=SHIFT,
        noise_level=NOISE_LEVEL,
        generator=generator,
    )


# -- 1. time split of one iteration -------------------------------------------------------------


def phased_iteration(setup: Setup, split: Split, generator: torch.Generator | None) -> None:
    """grpo_iteration's calls in its order, with a mark after each phase."""
    s = setup
    split.start()
    run = sample(s, s.ctx, generator)
    split.mark("rollout")
    rewards = s.reward_fn(run.final)
    split.mark("reward")
    advantages = group_advantages(rewards["total"], s.keys).to(run.final.device)
    steps = trainable_steps(run.log_probs.shape[0], s.train_steps, generator or torch.Generator())
    split.mark("advantages")
    for step in steps:
        loss, _, _, _ = grpo_loss_for_step(
            s.transformer,
            run,
            step,
            s.ctx,
            advantages,
            noise_level=NOISE_LEVEL,
            clip_range=CLIP_RANGE,
            beta=BETA,
        )
        split.mark("loss")
        (loss / len(steps)).backward()
        split.mark("backward")
    trainable = [p for p in s.transformer.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    split.mark("optimizer")


def full_iteration(setup: Setup, generator: torch.Generator | None) -> None:
    grpo_iteration(
        setup.transformer,
        setup.optimizer,
        [CandidateBatch(setup.ctx, setup.keys, setup.reward_fn)],
        num_steps=setup.num_steps,
        train_steps=setup.train_steps,
        shift=SHIFT,
        noise_level=NOISE_LEVEL,
        clip_range=CLIP_RANGE,
        beta=BETA,
        grad_clip=GRAD_CLIP,
        generator=generator,
    )


def time_split(setup: Setup, args: argparse.Namespace) -> None:
    split = Split(setup.device)
    full: list[float] = []
    for i in range(1 + args.iterations):
        note(f"1. iteration {i + 1}/{1 + args.iterations}" + (" (warm-up)" if i == 0 else ""))
        phased_iteration(setup, split, generator_for(setup, 2 * i))
        seconds = timed(
            setup.device, lambda i=i: full_iteration(setup, generator_for(setup, 2 * i + 1))
        )
        if i > 0:
            full.append(seconds)
    medians = split.medians(skip=1)
    total = medians["total"]
    update = ("loss", "backward", "optimizer")
    update_total = statistics.median(
        sum(it[name] for name in update) for it in split.iterations[1:]
    )
    batch = len(setup.keys)
    rows_per_call = 2 * batch if GUIDANCE != 1.0 else batch
    stochastic = setup.num_steps - 1
    trained = min(setup.train_steps, stochastic)

    def share(seconds: float) -> str:
        return f"{seconds / total:.0%}"

    labels = [
        ("rollout", f"rollout: {setup.num_steps} steps x {batch} candidates, per-step log-probs"),
        ("reward", "reward: PixelCodec decode + tiny CLIP (R_IF, R_SP, PickScore)"),
        ("advantages", "advantages + choice of trained steps"),
    ]
    rows = [[label, ms(medians[name]), share(medians[name])] for name, label in labels]
    rows.append(
        [f"update: {trained} trained step(s), AdamW", ms(update_total), share(update_total)]
    )
    sub = {
        "loss": "policy forward (grad) + reference forward (no adapter, no grad) + loss",
        "backward": "backward",
        "optimizer": "clip_grad_norm_ + AdamW step + zero_grad",
    }
    for name, label in sub.items():
        rows.append([f"- of which {label}", ms(medians[name]), share(medians[name])])
    rows.append(["**sum of the phases**", f"**{ms(total)}**", "**100%**"])
    full_median = statistics.median(full)
    rows.append(
        [
            "one grpo_iteration call (interleaved)",
            ms(full_median),
            f"{full_median / total:.0%} of the sum",
        ]
    )

    print("## 1. Time split of one Edit-GRPO iteration")
    print()
    print(machine(setup.device))
    print()
    print(
        f"Tiny DiT + LoRA rank {LORA_RANK} ({setup.lora_parameters / 1e3:.1f}k trainable "
        f"parameters); {args.groups} group(s) x {args.group_size} candidates = {batch} "
        f"candidates of latents [{batch}, {setup.ctx.source.shape[1]}, "
        f"{', '.join(map(str, setup.ctx.source.shape[2:]))}] ({FRAMES} frames of {SIZE}x{SIZE}, "
        f"pixel codec factor {CODEC_FACTOR}), {COND_TOKENS} condition tokens of {TEXT_DIM}-d; "
        f"guidance {GUIDANCE} ({rows_per_call} rows per model call); {setup.num_steps} sampling "
        f"steps ({stochastic} with a log-prob), {trained} trained; clip range {CLIP_RANGE:g}, "
        f"KL beta {BETA:g}. Median of {args.iterations} iteration(s) after 1 warm-up; shares "
        "of the median sum of the phases."
    )
    print()
    table(["phase", "median ms", "share of total"], rows)
    forwards = setup.num_steps + 2 * trained
    print(
        f"Model calls per iteration: {setup.num_steps} no-grad forwards in the rollout, "
        f"{trained} forward + backward and {trained} no-grad reference forwards in the "
        f"update ({forwards} forwards of batch {rows_per_call} in all)."
    )
    print()


# -- 2. batched vs one-at-a-time rollout --------------------------------------------------------


def candidate_context(ctx: EditContext, i: int) -> EditContext:
    """Candidate ``i``'s slice of a batched context (batch 1)."""
    pick = slice(i, i + 1)

    def one(c: Conditions) -> Conditions:
        return Conditions(c.tokens[pick], c.mask[pick], c.pooled[pick])

    return replace(
        ctx,
        source=ctx.source[pick],
        reference=None if ctx.reference is None else ctx.reference[pick],
        cond=one(ctx.cond),
        uncond=one(ctx.uncond),
    )


def batched_vs_loop(setup: Setup, args: argparse.Namespace) -> None:
    batch = len(setup.keys)
    singles = [candidate_context(setup.ctx, i) for i in range(batch)]

    def batched(seed: int) -> None:
        sample(setup, setup.ctx, generator_for(setup, seed))

    def loop(seed: int) -> None:
        generator = generator_for(setup, seed)
        for ctx in singles:
            sample(setup, ctx, generator)

    times: dict[str, list[float]] = {"batched": [], "loop": []}
    for i in range(1 + args.iterations):
        note(f"2. rollouts {i + 1}/{1 + args.iterations}" + (" (warm-up)" if i == 0 else ""))
        for name, run in (("batched", batched), ("loop", loop)):
            seconds = timed(setup.device, lambda run=run, i=i: run(i))
            if i > 0:
                times[name].append(seconds)
    base = statistics.median(times["batched"])
    loop_median = statistics.median(times["loop"])
    rows_per_call = 2 if GUIDANCE != 1.0 else 1
    labels = {
        "batched": f"batched: 1 call, batch {batch} ({rows_per_call * batch} rows per step)",
        "loop": f"one at a time: {batch} calls of batch 1 ({rows_per_call} rows per step)",
    }
    rows = []
    for name, label in labels.items():
        median = statistics.median(times[name])
        rows.append(
            [
                label,
                ms(median),
                ms(min(times[name])),
                ms(median / batch),
                f"{loop_median / median:.2f}x",
            ]
        )
    print("## 2. Batched vs one-candidate-at-a-time rollout")
    print()
    print(machine(setup.device))
    print()
    print(
        f"The {batch} candidates of one iteration, {setup.num_steps} steps, guidance "
        f"{GUIDANCE}, shift {SHIFT:g}, noise level {NOISE_LEVEL}, per-step log-probs kept. "
        f"Median and fastest of {args.iterations} rollout(s) after 1 warm-up, interleaved."
    )
    print()
    table(
        [
            "rollout of one iteration",
            "median ms",
            "fastest ms",
            "ms per candidate",
            "speed-up vs one at a time",
        ],
        rows,
    )
    print(f"Batching speed-up: {loop_median / base:.1f}x (median one-at-a-time / median batched).")
    print()


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--iterations", type=int, default=5, help="timed iterations (after 1 warm-up)"
    )
    parser.add_argument("--group-size", type=int, default=4, help="candidates per group (G)")
    parser.add_argument("--groups", type=int, default=2, help="groups per iteration")
    parser.add_argument("--num-steps", type=int, default=8, help="sampling steps")
    parser.add_argument("--train-steps", type=int, default=3, help="trained steps per iteration")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = parser.parse_args()
    if min(args.iterations, args.groups, args.train_steps) < 1:
        parser.error("--iterations, --groups and --train-steps must be positive")
    if args.group_size < 2:
        parser.error("--group-size must be at least 2 (advantages are relative to the group)")
    if args.num_steps < 2:
        parser.error("--num-steps must be at least 2 (the last step has no log-prob)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="viva-bench-grpo-") as workdir:
        setup = prepare(args, device, Path(workdir))
        time_split(setup, args)
        batched_vs_loop(setup, args)


if __name__ == "__main__":
    main()
