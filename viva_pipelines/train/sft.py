"""Context-aware SFT of the VIVA editing model (docs/method.md), one readable loop.

    torchrun --nproc_per_node N -m viva_pipelines.train.sft --config sft.yaml

Steps: cache the instructor tokens and latents (once per dataset version), build or load the
DiT, resume from the newest checkpoint, then per step: the global batch plan -> this rank's
share -> noise -> velocity -> mask-weighted flow-matching loss -> AdamW, or Muon for the DiT
blocks' matrices (``optim.optimizer``, train/optimizers.py). Validation loss,
sampled previews and PSNR at intervals; checkpoints every ``runtime.checkpoint_every`` steps;
the final model directory under ``{output_prefix}/model``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers import HunyuanVideoTransformer3DModel
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from viva_pipelines.evaluation.metrics import capped_psnr
from viva_pipelines.model.channels import CONDITION_STREAMS, POSITION_CHANNELS, reads_positions
from viva_pipelines.model.clips import ClipGeometry, to_uint8_frames
from viva_pipelines.model.codecs import VideoCodec, load_codec
from viva_pipelines.model.flow_matching import (
    GateReading,
    add_noise,
    edit_gate_logits,
    gate_loss,
    masked_flow_matching_loss,
    output_channels,
    perturbed_input,
    sigma_loss_weights,
    velocity_from_prediction,
    velocity_target,
)
from viva_pipelines.model.instructor import (
    Instructor,
    InstructorConfig,
    InstructorOutput,
    load_prompt_template,
)
from viva_pipelines.model.pipeline import (
    Conditions,
    ModelSpec,
    SamplingDefaults,
    VivaEditPipeline,
    sample_edit,
)
from viva_pipelines.model.transformer import (
    build_transformer,
    pooled_vector,
    predict_output,
    reproject_pooled_input,
    tiny_transformer_config,
    widen_patch_embedding,
)
from viva_pipelines.previews import grid, to_png
from viva_pipelines.storage import Storage
from viva_pipelines.train.checkpoint import (
    completed_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from viva_pipelines.train.config import TINY, ModelOptions, SftConfig
from viva_pipelines.train.distributed import (
    DistContext,
    apply_gradient_checkpointing,
    gradient_sync,
    precision,
    unwrap,
    wrap_model,
)
from viva_pipelines.train.ema import WeightEma
from viva_pipelines.train.optimizers import build_optimizer
from viva_pipelines.train.reporting import Reporter, run_entry_point
from viva_pipelines.train.runs import model_key, summary_key
from viva_pipelines.train.schedule import warmup_cosine
from viva_pipelines.train.sft_data import (
    BLIND_TOKENS,
    IMAGE,
    VIDEO,
    Batch,
    CachedSamples,
    PixelSample,
    build_cache,
    cache_is_complete,
    cache_version,
    collate,
    load_unconditional,
    mask_to_latents,
    pad_tokens,
    plan_step,
    read_dataset_manifest,
    with_mirrored,
)
from viva_pipelines.video.io import write_video

log = logging.getLogger("viva_pipelines.train")

ACCEPTED = "accepted"


def local_instructor(storage: Storage, location: str) -> str:
    """A directory or hub id ``from_pretrained`` can load for ``model.instructor``: ``tiny``
    built locally (see :func:`ensure_tiny_instructor`), one in the storage root (the
    ``instructor_model`` asset's) as is when the root is local, else copied once into the
    temp dir under a name derived from its URI (published with an atomic rename, so
    concurrent ranks never see half a model); anything else as given."""
    if location == TINY:
        from viva_pipelines.embedded.instructor import ensure_tiny_instructor

        return str(ensure_tiny_instructor())
    if not (storage.is_remote and location.startswith(storage.root_uri)):
        return location
    target = Path(
        tempfile.gettempdir(),
        f"viva-instructor-{hashlib.sha256(location.encode()).hexdigest()[:12]}",
    )
    if not (target / "config.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        storage.get_dir(storage.key_of(location), staging)
        try:
            os.replace(staging, target)
        except OSError:  # another rank published it first
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def instructor_config(
    config: SftConfig, device: torch.device, storage: Storage
) -> InstructorConfig:
    """The instructor to load (see :func:`local_instructor`)."""
    model = config.model
    return InstructorConfig(
        model=local_instructor(storage, model.instructor),
        prompt_template=model.instructor_prompt,
        hidden_layer=model.instructor_layer,
        text_only=model.text_only,
        pad_to_square=model.instructor_pad_to_square,
        crop_template=model.crop_template,
        device=str(device),
    )


def training_rows(storage: Storage, config: SftConfig) -> pd.DataFrame:
    """The accepted samples of the dataset manifest (image rows dropped when images are off),
    with their mirrored twins when ``data.mirror`` is on (:func:`with_mirrored`)."""
    manifest = read_dataset_manifest(storage, config.data.manifest_key)
    rows = manifest[manifest["status"] == ACCEPTED]
    if not config.data.use_images:
        rows = rows[rows["modality"] == VIDEO]
    if rows.empty:
        raise ValueError(f"{config.data.manifest_key}: no accepted samples to train on")
    rows = rows.sort_values("sample_id").reset_index(drop=True)
    return with_mirrored(rows) if config.data.mirror else rows


def make_encoder(
    codec: VideoCodec, instructor: Instructor, device: torch.device, *, blind: bool = False
):
    """The cache encoder: a chunk of same-modality pixel samples -> latents and tokens; with
    ``blind`` also the tokens of each instruction with a blank first frame and no reference
    (:data:`BLIND_TOKENS`, for ``loss.frame_dropout``)."""

    def real_tokens(out: InstructorOutput) -> list[torch.Tensor]:
        return [t[m.bool()].cpu() for t, m in zip(out.tokens, out.attention_mask, strict=True)]

    @torch.no_grad()
    def encode(
        samples: list[PixelSample],
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
        source = codec.encode(torch.stack([s.source for s in samples]).to(device))
        target = codec.encode(torch.stack([s.target for s in samples]).to(device))
        first = samples[0].source
        blank = torch.zeros(first.shape[0], 1, *first.shape[2:])
        references = torch.stack([blank if s.reference is None else s.reference for s in samples])
        reference = codec.encode(references.to(device))
        has_reference = torch.tensor([s.reference is not None for s in samples], device=device)
        reference = reference * has_reference.reshape(-1, 1, 1, 1, 1)
        mask = mask_to_latents(torch.stack([s.mask for s in samples]), source.shape[2:])
        out = instructor.encode(
            [s.instruction for s in samples],
            [s.first_frame for s in samples],
            [s.reference_image for s in samples],
        )
        tokens = {"tokens": real_tokens(out)}
        if blind:
            blank_frames = [np.zeros_like(s.first_frame) for s in samples]
            tokens[BLIND_TOKENS] = real_tokens(
                instructor.encode([s.instruction for s in samples], blank_frames)
            )
        latents = {"source": source, "target": target, "reference": reference, "mask": mask}
        return {name: value.float().cpu() for name, value in latents.items()}, tokens

    return encode


def cache_prefix_of(
    storage: Storage, config: SftConfig, codec: VideoCodec, instructor_cfg: InstructorConfig
) -> str:
    """Where the run's cache lives: ``{data.cache_prefix}/{version}``, the version hashing
    everything a cached tensor depends on (see :func:`cache_version`)."""
    # The prompt's text, not just its file name: editing the template invalidates the cache;
    # the tiny instructor by its build (its directory name carries a hash of its inputs).
    identity = {
        **instructor_cfg.__dict__,
        "model": (
            Path(instructor_cfg.model).name
            if config.model.instructor == TINY
            else config.model.instructor
        ),
        "device": None,
        "prompt_sha256": hashlib.sha256(
            load_prompt_template(config.model.instructor_prompt).encode()
        ).hexdigest(),
    }
    version = cache_version(
        config.data.dataset_version,
        identity,
        codec.config,
        geometry_of(config),
        mirror=config.data.mirror,
        blind=config.loss.needs_blind_tokens,
    )
    return f"{config.data.cache_prefix}/{version}"


def prepare_cache(
    storage: Storage, config: SftConfig, ctx: DistContext, codec: VideoCodec, report: Reporter
) -> tuple[CachedSamples, torch.Tensor, str]:
    """The cached dataset, its unconditional tokens and its prefix; encodes what is missing."""
    geometry = geometry_of(config)
    rows = training_rows(storage, config)
    instructor_cfg = instructor_config(config, ctx.device, storage)
    prefix = cache_prefix_of(storage, config, codec, instructor_cfg)
    if cache_is_complete(storage, prefix):
        report.info(f"cache hit: {storage.uri(prefix)} (the instructor is not loaded)")
        index = storage.read_parquet(f"{prefix}/index.parquet")
    else:
        report.info(f"caching {len(rows)} samples into {storage.uri(prefix)}")
        started = time.perf_counter()
        instructor = Instructor(instructor_cfg)
        empty = instructor.encode_unconditional(1)
        unconditional = empty.tokens[0][empty.attention_mask[0].bool()].cpu()
        index = build_cache(
            storage,
            prefix,
            rows,
            geometry,
            make_encoder(codec, instructor, ctx.device, blind=config.loss.needs_blind_tokens),
            unconditional,
            rank=ctx.rank,
            world_size=ctx.world_size,
            barrier=ctx.barrier,
        )
        del instructor
        report.info(f"cached in {time.perf_counter() - started:.1f}s")
    wanted = set(rows["sample_id"])
    index = index[index["sample_id"].isin(wanted)].reset_index(drop=True)
    return CachedSamples(storage, index), load_unconditional(storage, prefix), prefix


def geometry_of(config: SftConfig) -> ClipGeometry:
    data = config.data
    return ClipGeometry(data.frames, data.frame_stride, data.height, data.width)


def scratch_config(model: ModelOptions, latent_channels: int, token_dim: int) -> dict[str, Any]:
    """The diffusers config of the DiT trained from scratch (``sft.model.scratch``) for
    ``latent_channels`` and condition tokens ``token_dim`` wide: what :func:`build_model`
    builds and ``viva plan`` sizes."""
    return tiny_transformer_config(
        latent_channels,
        token_dim,
        **model.scratch.model_dump(exclude={"init"}),
        out_channels=output_channels(latent_channels, model.prediction),
        position_channels=model.position_channels,
    )


def build_model(
    config: SftConfig, latent_channels: int, token_dim: int
) -> HunyuanVideoTransformer3DModel:
    """The tiny DiT from scratch, or a pretrained one (a text-to-video checkpoint is widened).

    From scratch with ``prediction: source_residual`` the output layer starts at zero, so the
    untrained model returns the source unchanged and training learns only what to change."""
    if config.model.transformer is None:
        model = build_transformer(
            scratch_config(config.model, latent_channels, token_dim),
            seed=config.runtime.seed,
            init=config.model.scratch.init,
        )
        if config.model.prediction != "velocity":
            torch.nn.init.zeros_(model.proj_out.weight)
            torch.nn.init.zeros_(model.proj_out.bias)
        return model
    model = HunyuanVideoTransformer3DModel.from_pretrained(
        config.model.transformer, subfolder=config.model.transformer_subfolder
    )
    if model.config.in_channels == model.config.out_channels:
        extra = (CONDITION_STREAMS - 1) * model.config.out_channels
        widen_patch_embedding(model, extra + POSITION_CHANNELS * config.model.position_channels)
    if reads_positions(model.config.in_channels) != config.model.position_channels:
        raise ValueError(
            f"{config.model.transformer}: reads {model.config.in_channels} input channels, which"
            f" does not match sft.model.position_channels={config.model.position_channels}"
        )
    if model.config.text_embed_dim != token_dim:
        raise ValueError(
            f"{config.model.transformer}: the DiT's text_embed_dim is "
            f"{model.config.text_embed_dim} but the instructor's hidden size is {token_dim}"
        )
    if model.config.pooled_projection_dim != token_dim:  # CLIP-L's 768 in HunyuanVideo
        reproject_pooled_input(model, token_dim)
    return model


@dataclass
class Evaluation:
    """Fixed validation samples with fixed noise, so curves compare across steps and runs."""

    loss_items: list[dict[str, torch.Tensor]]
    sample_items: list[dict[str, torch.Tensor]]
    sample_rows: pd.DataFrame
    sigmas: tuple[float, ...]
    seed: int


def make_evaluation(dataset: CachedSamples, config: SftConfig) -> Evaluation:
    index = dataset.index
    val = index[index["split"] == "val"]
    if val.empty:
        val = index  # no held-out split (tiny datasets): evaluate on what there is
    loss_positions = val.index[: config.eval.val_samples]
    videos = val[val["modality"] == VIDEO]
    sample_rows = (videos if not videos.empty else val).iloc[: config.eval.sample_count]
    return Evaluation(
        loss_items=[dataset[p] for p in loss_positions],
        sample_items=[dataset[p] for p in sample_rows.index],
        sample_rows=sample_rows,
        sigmas=config.eval.sigmas,
        seed=config.runtime.seed + 7919,
    )


def forward_loss(
    model: torch.nn.Module,
    batch: Batch,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    config: SftConfig,
    autocast: contextlib.AbstractContextManager,
    perturbation: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mask-weighted flow-matching loss of one batch (docs/method.md). ``perturbation``: extra
    noise added to the model's input only (see :func:`~viva_pipelines.model.flow_matching.
    perturbed_input`); the target stays the velocity of the unperturbed path."""
    noisy = add_noise(batch.target, noise, sigmas)
    if perturbation is not None:
        noisy = perturbed_input(noisy, perturbation, sigmas)
    prediction = config.model.prediction
    with autocast:
        output = predict_output(
            model,
            noisy,
            sigmas,
            batch.source,
            batch.reference,
            batch.tokens,
            batch.token_mask,
            pooled_vector(batch.tokens, batch.token_mask, config.model.pooled),
            embedded_guidance=_embedded_guidance(model, config),
        )
    velocity = velocity_from_prediction(output, noisy, batch.source, sigmas, prediction)
    target = velocity_target(batch.target, noise)
    loss = masked_flow_matching_loss(
        velocity,
        target,
        batch.mask,
        config.loss.mask_lambda,
        sigma_loss_weights(sigmas, config.loss.weighting),
    )
    gate = edit_gate_logits(output, prediction)
    if gate is not None:
        # Without its source (condition dropout) the model makes the whole frame: gate open.
        dropped = (batch.source == 0).flatten(1).all(1).reshape(-1, 1, 1, 1, 1)
        wanted = torch.where(dropped, torch.ones_like(batch.mask), batch.mask)
        loss = loss + config.loss.gate_weight * gate_loss(gate, wanted)
    return loss


def _embedded_guidance(model: torch.nn.Module, config: SftConfig) -> float | None:
    return config.model.embedded_guidance if unwrap(model).config.guidance_embeds else None


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    evaluation: Evaluation,
    unconditional: torch.Tensor,
    config: SftConfig,
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
) -> float:
    """Mean loss over the validation items at each of the fixed sigmas (no dropout)."""
    generator = torch.Generator().manual_seed(evaluation.seed)
    losses = []
    for is_image in (False, True):  # a batch is all-video or all-image (equal shapes)
        group = [i for i in evaluation.loss_items if (i["source"].shape[1] == 1) == is_image]
        for start in range(0, len(group), config.optim.batch_size):
            chunk = group[start : start + config.optim.batch_size]
            keep = torch.zeros(len(chunk), dtype=torch.bool)
            batch = collate(chunk, unconditional, keep, keep).to(device)
            for sigma in evaluation.sigmas:
                noise = torch.randn(batch.target.shape, generator=generator).to(device)
                sigmas = torch.full((len(chunk),), sigma, device=device)
                loss = forward_loss(model, batch, noise, sigmas, config, autocast)
                losses.append((loss.item(), len(chunk)))
    total = sum(n for _, n in losses)
    return sum(loss * n for loss, n in losses) / total


@torch.no_grad()
def sample_previews(
    model: torch.nn.Module,
    evaluation: Evaluation,
    unconditional: torch.Tensor,
    codec: VideoCodec,
    config: SftConfig,
    device: torch.device,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Edit the fixed validation clips; PSNR against the ground-truth target for the model and
    for the identity baseline (source returned unchanged), overall and per edit type.
    Returns the metrics and, per clip, a ``uint8 [T, H, 3W, 3]`` source|target|edit strip."""
    items = evaluation.sample_items
    keep = torch.zeros(len(items), dtype=torch.bool)
    batch = collate(items, unconditional, keep, keep).to(device)
    cond = Conditions.from_tokens(batch.tokens, batch.token_mask, config.model.pooled)
    empty, empty_mask = pad_tokens([unconditional] * len(items))
    uncond = Conditions.from_tokens(empty.to(device), empty_mask.to(device), config.model.pooled)
    has_reference = any(bool(i["has_reference"]) for i in items)
    latents = sample_edit(
        unwrap(model),
        batch.source,
        batch.reference if has_reference else None,
        cond,
        uncond,
        num_steps=config.eval.sample_steps,
        guidance_scale=config.eval.guidance_scale,
        source_guidance_scale=config.eval.source_guidance_scale,
        shift=config.eval.sample_shift,
        embedded_guidance=_embedded_guidance(model, config),
        prediction=config.model.prediction,
        gate_reading=GateReading(config.eval.gate_threshold, config.eval.gate_sharpness),
        generator=torch.Generator().manual_seed(evaluation.seed),
    )
    edits = codec.decode(latents)
    sources, targets = codec.decode(batch.source), codec.decode(batch.target)
    pixel_masks = torch.nn.functional.interpolate(batch.mask, size=edits.shape[2:], mode="nearest")
    records, strips = [], []
    for i, edit_type in enumerate(evaluation.sample_rows["edit_type"]):
        src, tgt, out = (to_uint8_frames(x[i]) for x in (sources, targets, edits))
        region = pixel_masks[i, 0].cpu().numpy() > 0.5
        records.append(
            {
                "edit_type": edit_type,
                "val_psnr": capped_psnr(out, tgt),
                "val_psnr_identity": capped_psnr(src, tgt),
                # Inside the edit mask the identity baseline is wrong by construction: beating
                # it there means the instruction was followed.
                "val_psnr_edit_region": capped_psnr(out, tgt, mask=region),
                "val_psnr_edit_region_identity": capped_psnr(src, tgt, mask=region),
            }
        )
        strips.append(np.concatenate([src, tgt, out], axis=2))
    table = pd.DataFrame(records)
    metrics = {name: float(table[name].mean()) for name in table.columns if name != "edit_type"}
    for edit_type, value in table.groupby("edit_type")["val_psnr"].mean().items():
        metrics[f"val_psnr/{edit_type}"] = float(value)
    return metrics, strips


def write_previews(
    storage: Storage, prefix: str, step: int, strips: list[np.ndarray], report: Reporter
) -> str:
    """A side-by-side MP4 (source | target | edit, one row per clip) and a PNG of its middle
    frame, in storage and in the MLflow run."""
    video = np.concatenate(strips, axis=1)  # [T, rows*H, 3W, 3]
    scale = max(1, 256 // video.shape[2] * 2)
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    video = video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]
    key = f"{prefix}/previews/step-{step:08d}.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, Path(key).name)
        write_video(local, video, fps=2)
        storage.put_file(local, key)
        report.artifact(local, "previews")
        png = Path(tmp, f"step-{step:08d}.png")
        png.write_bytes(to_png(grid([[video[len(video) // 2]]], height=video.shape[1])))
        storage.put_file(png, key.replace(".mp4", ".png"))
        report.artifact(png, "previews")
    return storage.uri(key)


def lr_lambda(config: SftConfig):
    """The SFT's LR multiplier per optimizer step (``sft.optim`` warm-up, steps, floor)."""
    optim = config.optim
    return lambda step: warmup_cosine(step, optim.warmup_steps, optim.max_steps, optim.min_lr_ratio)


def train(config: SftConfig, ctx: DistContext, report: Reporter) -> dict[str, Any]:
    """Run (or resume) the SFT and return a summary; rank 0 writes the model directory."""
    runtime = config.runtime
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    torch.manual_seed(runtime.seed)
    storage = Storage(
        config.data.storage_root,
        endpoint_url=config.data.endpoint_url,
        region_name=config.data.region_name,
    )
    codec = load_codec(config.model.codec)
    dataset, unconditional, cache_prefix = prepare_cache(storage, config, ctx, codec, report)
    index = dataset.index
    train_index = index[index["split"] == "train"]
    pools = {m: train_index.index[train_index["modality"] == m].to_numpy() for m in (VIDEO, IMAGE)}
    accumulation = config.optim.grad_accumulation
    if config.optim.batch_size % (ctx.world_size * accumulation):
        raise ValueError(
            f"optim.batch_size {config.optim.batch_size} is not divisible by {ctx.world_size} "
            f"ranks x {accumulation} micro-batches (optim.grad_accumulation)"
        )
    evaluation = make_evaluation(dataset, config)
    first = dataset[0]
    bare = build_model(config, first["source"].shape[0], first["tokens"].shape[-1]).to(ctx.device)
    apply_gradient_checkpointing(bare, runtime)
    autocast = precision(runtime, ctx.device)
    model = wrap_model(bare, ctx, runtime.parallel)
    optimizer = build_optimizer(
        model,
        config.optim.optimizer,
        lr=config.optim.lr,
        betas=config.optim.betas,
        weight_decay=config.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    ema = WeightEma(model, config.optim.ema_decay) if config.optim.ema_decay else None
    # Evaluation and export use the averaged weights when there are any: they are what ships.
    shipped = ema.applied if ema is not None else contextlib.nullcontext
    if (
        runtime.parallel == "fsdp"
        and ctx.active
        and completed_checkpoints(storage, config.output_prefix)
    ):
        raise ValueError(
            f"{storage.uri(config.output_prefix)}: resuming a sharded (FSDP) run from its "
            "checkpoints is not supported yet; resume with runtime.parallel: ddp (the "
            "checkpoints are full state dicts) or start a new output_prefix"
        )
    resumed = load_latest_checkpoint(
        storage, config.output_prefix, model, optimizer, scheduler, ema=ema
    )
    start = resumed["step"] if resumed else 0
    history: dict[str, list] = dict(resumed.get("history", {})) if resumed else {}
    report.info(
        f"SFT: {len(train_index)} train samples ({len(pools[VIDEO])} video, {len(pools[IMAGE])} "
        f"image), {sum(p.numel() for p in bare.parameters()) / 1e6:.2f}M parameters, "
        f"{ctx.world_size} rank(s) on {ctx.device}, steps {start}->{config.optim.max_steps}"
        + (" (resumed)" if resumed else "")
    )

    def evaluate(step: int, *, sample: bool) -> dict[str, float]:
        model.eval()
        with shipped():
            metrics = {
                "val_loss": validation_loss(
                    model, evaluation, unconditional, config, ctx.device, autocast()
                )
            }
            if sample:
                sampled, strips = sample_previews(
                    model, evaluation, unconditional, codec, config, ctx.device
                )
                metrics.update(sampled)
                if ctx.is_main:
                    write_previews(storage, config.output_prefix, step, strips, report)
        model.train()
        report.metrics(step, metrics)
        for name, value in metrics.items():
            history.setdefault(name, []).append([step, value])
        report.info(
            f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k)
        )
        return metrics

    if start == 0:
        evaluate(0, sample=True)
    model.train()
    window: list[float] = []
    tick = time.perf_counter()
    for step in range(start, config.optim.max_steps):
        plan = plan_step(
            step,
            seed=runtime.seed,
            pools=pools,
            video_fraction=config.data.video_fraction if config.data.use_images else 1.0,
            batch_size=config.optim.batch_size,
            loss=config.loss,
        )
        micro_batches = []
        for micro in plan.micro_batches(ctx.rank, ctx.world_size, accumulation):
            items = [dataset[int(p)] for p in plan.positions[micro]]
            drops = plan.drop_instruction[micro], plan.drop_source[micro], plan.drop_frame[micro]
            micro_batches.append((micro, collate(items, unconditional, *drops)))
        sample_shape = micro_batches[0][1].target.shape[1:]
        noise = torch.randn((len(plan.positions), *sample_shape), generator=plan.generator)
        perturbation = None
        if config.loss.input_perturbation:
            perturbation = config.loss.input_perturbation * torch.randn(
                noise.shape, generator=plan.generator
            )
        loss = torch.zeros((), device=ctx.device)
        for index, (micro, batch) in enumerate(micro_batches):
            with gradient_sync(model, enabled=index == len(micro_batches) - 1):
                micro_loss = forward_loss(
                    model,
                    batch.to(ctx.device),
                    noise[micro].to(ctx.device),
                    plan.sigmas[micro].to(ctx.device),
                    config,
                    autocast(),
                    None if perturbation is None else perturbation[micro].to(ctx.device),
                )
                (micro_loss / accumulation).backward()
            loss = loss + micro_loss.detach() / accumulation
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()
        window.append(ctx.mean(loss).item())
        done = step + 1
        if done % 10 == 0 or done == config.optim.max_steps:
            elapsed = time.perf_counter() - tick
            metrics = {
                "train_loss": float(np.mean(window)),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "step_time_s": elapsed / len(window),
            }
            report.metrics(done, metrics)
            history.setdefault("train_loss", []).append([done, metrics["train_loss"]])
            report.info(
                f"step {done}/{config.optim.max_steps}: loss {metrics['train_loss']:.4f}, "
                f"lr {metrics['lr']:.2e}, {metrics['step_time_s']:.2f}s/step"
            )
            window, tick = [], time.perf_counter()
        last = done == config.optim.max_steps
        sample_now = last or (config.eval.sample_every and done % config.eval.sample_every == 0)
        if last or done % config.eval.every == 0:
            evaluate(done, sample=bool(sample_now))
        if last or done % runtime.checkpoint_every == 0:
            save_checkpoint(
                storage,
                config.output_prefix,
                done,
                model,
                optimizer,
                scheduler,
                is_main=ctx.is_main,
                extra={"history": history},
                keep=runtime.keep_checkpoints,
                ema=ema,
            )
            ctx.barrier()  # nobody looks for checkpoints while rank 0 still writes one

    summary = summarise(history, config.optim.max_steps, start)
    summary["cache_uri"] = storage.uri(cache_prefix)
    # Gathered on every rank (FSDP shards the weights), written by rank 0 from a plain copy.
    with shipped():
        weights = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if ctx.is_main:  # inside: on CPU the state dict shares the parameters' storage
            export = HunyuanVideoTransformer3DModel.from_config(bare.config)
            export.load_state_dict(weights)
    if ctx.is_main:
        summary["model_uri"] = save_model(storage, config, export, codec)
        storage.write_json(summary_key(config.output_prefix), summary)
    ctx.barrier()
    return summary


def summarise(history: dict[str, list], steps: int, start: int) -> dict[str, Any]:
    """First and last value of every tracked metric, plus the run's shape."""
    summary: dict[str, Any] = {"steps": steps, "resumed_from": start}
    for name, points in history.items():
        if points:
            summary[f"{name}_first"] = points[0][1]
            summary[f"{name}_last"] = points[-1][1]
    summary["history"] = history
    return summary


def save_model(
    storage: Storage, config: SftConfig, transformer: torch.nn.Module, codec: VideoCodec
) -> str:
    """Write the model directory (DiT, codec, instructor) under ``{output_prefix}/model``."""
    fields = instructor_config(config, torch.device("cpu"), storage).__dict__
    spec = ModelSpec(
        instructor={k: v for k, v in fields.items() if k != "device"},
        pooled=config.model.pooled,
        embedded_guidance=config.model.embedded_guidance
        if transformer.config.guidance_embeds
        else None,
        prediction=config.model.prediction,
        frames=config.data.frames,
        frame_stride=config.data.frame_stride,
        height=config.data.height,
        width=config.data.width,
        sampling=SamplingDefaults(
            num_steps=config.eval.sample_steps,
            guidance_scale=config.eval.guidance_scale,
            source_guidance_scale=config.eval.source_guidance_scale,
            shift=config.eval.sample_shift,
            gate_threshold=config.eval.gate_threshold,
            gate_sharpness=config.eval.gate_sharpness,
            mirror_ensemble=config.eval.mirror_ensemble,
        ),
        lineage={"dataset_version": config.data.dataset_version, "config": config.fingerprint()},
    )
    pipeline = VivaEditPipeline(transformer, codec, spec)
    prefix = model_key(config.output_prefix)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline.save_pretrained(tmp)
        return storage.put_dir(tmp, prefix)


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(
        argv,
        description="VIVA context-aware SFT (run under torchrun)",
        load_config=SftConfig.from_yaml,
        train=train,
    )


if __name__ == "__main__":
    raise SystemExit(main())
