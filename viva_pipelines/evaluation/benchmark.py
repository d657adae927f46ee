"""Run a benchmark suite: edit every instance with every model, score, and tabulate.

Every instance is read once and brought to the ingest geometry (the same normalisation the
training videos went through), then each model edits it at its own clip geometry; the source,
target and mask are cut to that geometry too, so every metric compares frame ``k`` with frame
``k``. An instance whose media cannot be read, or an edit that fails, becomes a row with the
reason in ``error``: one bad file must not cost the other hundreds of scores.

Scores per (instance, model): CLIP-T, CLIP-F (adjacent frames), CLIP instruction following
(``clip_if``: similarity to the target caption minus that to the source caption, Edit-GRPO's
``R_IF``), background PSNR / SSIM outside the edit mask, PSNR / SSIM against the ground-truth
target over the whole frame and inside the edit mask (``region_psnr``, local edits), and,
with a judge, the three VLM scores and their mean.
"""

from __future__ import annotations

import io
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from viva_pipelines.evaluation.judge import judge_edit
from viva_pipelines.evaluation.metrics import PSNR_CAP, video_metrics
from viva_pipelines.evaluation.suite import CATEGORIES, BenchInstance
from viva_pipelines.manifests import FAILED, item_failure, markdown_table
from viva_pipelines.model.clips import ClipGeometry
from viva_pipelines.previews import grid, to_png
from viva_pipelines.storage import Storage
from viva_pipelines.video.images import ImageUnreadable, decode_image
from viva_pipelines.video.io import write_video
from viva_pipelines.video.normalise import NormaliseSpec, decode_normalised, normalise_masks
from viva_pipelines.video.probe import VideoRejected
from viva_pipelines.vlm.base import VlmBackend

if TYPE_CHECKING:
    from viva_pipelines.config.schema import BenchmarkSettings
    from viva_pipelines.model.pipeline import VivaEditPipeline
    from viva_pipelines.rewards.clip_rewards import ClipScorer

#: The baseline that returns its input: last on instruction following, first on background
#: preservation, by construction. Its presence makes a broken metric visible.
IDENTITY = "identity"
#: Per-instance score columns, in report order, with the label the tables use.
CRITERIA: dict[str, str] = {
    "judge_instruction_following": "VLM IF",
    "judge_source_fidelity": "VLM SF",
    "judge_edit_quality": "VLM EQ",
    "judge_avg": "VLM avg",
    "clip_if": "CLIP-IF",
    "clip_t": "CLIP-T",
    "clip_f": "CLIP-F",
    "bg_psnr": "BG PSNR",
    "bg_ssim": "BG SSIM",
    "target_psnr": "GT PSNR",
    "region_psnr": "Edit PSNR",
    "target_ssim": "GT SSIM",
}
#: PSNR columns: infinite for identical pixels, capped at :data:`PSNR_CAP` in averages.
PSNR_COLUMNS = ("bg_psnr", "target_psnr", "region_psnr")
#: Higher is better for every criterion.
SANITY_IF = ("judge_instruction_following", "clip_if")
SANITY_BG = "bg_psnr"


class MediaError(ValueError):
    """An instance's media that cannot be used; the message names the file."""


@dataclass
class InstanceMedia:
    """One instance at the ingest geometry: ``source``/``target`` ``uint8 [T, H, W, 3]``,
    ``mask`` ``bool [T, H, W]`` (True = may change), ``reference`` ``uint8 [h, w, 3]``."""

    source: np.ndarray
    target: np.ndarray | None = None
    mask: np.ndarray | None = None
    reference: np.ndarray | None = None


class Editor(Protocol):
    """A model under test: edits an instance's source clip at its own clip geometry."""

    name: str
    geometry: ClipGeometry

    def edit(self, media: InstanceMedia, instance: BenchInstance) -> np.ndarray:
        """``uint8 [geometry.frames, geometry.height, geometry.width, 3]``."""
        ...


@dataclass
class IdentityEditor:
    """Returns the source clip unchanged."""

    geometry: ClipGeometry
    name: str = IDENTITY

    def edit(self, media: InstanceMedia, instance: BenchInstance) -> np.ndarray:
        return self.geometry.cut(media.source)


@dataclass
class PipelineEditor:
    """A :class:`~viva_pipelines.model.pipeline.VivaEditPipeline` (with its LoRA, if any)."""

    name: str
    pipeline: VivaEditPipeline
    num_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    geometry: ClipGeometry = field(init=False)

    def __post_init__(self) -> None:
        self.geometry = self.pipeline.spec.geometry

    def edit(self, media: InstanceMedia, instance: BenchInstance) -> np.ndarray:
        return self.pipeline.edit(
            media.source,
            instance.instruction,
            reference=media.reference,
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
        )


def model_editors(
    model_dir: str | Path,
    lora_dir: str | Path | None,
    names: Sequence[str],
    *,
    device: str = "cpu",
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
) -> list[Editor]:
    """The editors ``names`` asks for, in the order ``sft``, ``grpo``, ``identity``: the
    model, the model with its Edit-GRPO LoRA (only when ``lora_dir`` is given) and the
    identity baseline at the model's clip geometry."""
    from viva_pipelines.model.pipeline import VivaEditPipeline

    options = {"num_steps": num_steps, "guidance_scale": guidance_scale, "seed": seed}
    base = VivaEditPipeline.from_pretrained(model_dir, device=device)
    editors: list[Editor] = []
    if "sft" in names:
        editors.append(PipelineEditor("sft", base, **options))
    if "grpo" in names and lora_dir is not None:
        tuned = VivaEditPipeline.from_pretrained(model_dir, device=device).load_lora(lora_dir)
        editors.append(PipelineEditor("grpo", tuned, **options))
    if IDENTITY in names:
        editors.append(IdentityEditor(base.spec.geometry))
    return editors


def first_per_category(instances: Sequence[BenchInstance], count: int) -> set[str]:
    """Ids of the first ``count`` instances of each category (the ones previewed)."""
    seen: dict[str, int] = {}
    chosen = set()
    for instance in instances:
        if seen.get(instance.category, 0) < count:
            seen[instance.category] = seen.get(instance.category, 0) + 1
            chosen.add(instance.id)
    return chosen


# -- reading instances -----------------------------------------------------------------------


def _read_mask(storage: Storage, key: str, frame_count: int) -> np.ndarray:
    """``uint8 [frame_count, H, W]`` (1 = edit) from an ``.npz`` (array ``mask``, ``[T, H, W]``
    per decoded source frame, or ``[H, W]`` for all of them) or an image (one static mask)."""
    data = storage.read_bytes(key)
    if key.endswith(".npz"):
        with np.load(io.BytesIO(data)) as archive:
            if "mask" not in archive:
                raise MediaError(f"{key}: no array named 'mask' (found {list(archive)})")
            mask = np.asarray(archive["mask"])
    else:
        import cv2

        mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise MediaError(f"{key}: not a readable mask image")
        mask = mask > 127
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (frame_count, *mask.shape))
    if mask.ndim != 3 or len(mask) != frame_count:
        raise MediaError(
            f"{key}: mask shape {mask.shape} does not match the source's {frame_count} frames"
        )
    return (np.asarray(mask) != 0).astype(np.uint8)


def _read_image(storage: Storage, key: str) -> np.ndarray:
    try:
        return decode_image(storage.read_bytes(key))
    except ImageUnreadable as exc:
        raise MediaError(f"{key}: not a readable image ({exc})") from None


def load_media(storage: Storage, instance: BenchInstance, spec: NormaliseSpec) -> InstanceMedia:
    """Decode and normalise an instance's files; raises :class:`MediaError` naming the file."""

    def decode(key: str):
        try:
            with storage.local_path(key) as path:
                return decode_normalised(path, spec)
        except (VideoRejected, ValueError, OSError) as exc:
            raise MediaError(f"{key}: {exc}") from None

    source = decode(instance.source_video)
    media = InstanceMedia(source.frames)
    if instance.target_video is not None:
        target = decode(instance.target_video).frames
        if target.shape != source.frames.shape:
            raise MediaError(
                f"{instance.target_video}: target normalises to {target.shape}, the source to "
                f"{source.frames.shape}; they must match frame for frame"
            )
        media.target = target
    if instance.edit_mask is not None:
        raw = _read_mask(storage, instance.edit_mask, source.probe.frame_count)
        try:
            fitted = normalise_masks(raw, source.source_indices, spec, source.probe)
        except ValueError as exc:
            raise MediaError(f"{instance.edit_mask}: {exc}") from None
        media.mask = fitted > 0
    if instance.reference_image is not None:
        media.reference = _read_image(storage, instance.reference_image)
    return media


# -- scoring ----------------------------------------------------------------------------------


@dataclass
class BenchmarkRun:
    """Per-(instance, model) rows and the edited clips kept for previews."""

    rows: pd.DataFrame
    clips: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def score_edit(
    scorer: ClipScorer,
    instance: BenchInstance,
    source: np.ndarray,
    edited: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    target: np.ndarray | None = None,
    judge: VlmBackend | None = None,
    judge_cache: object | None = None,
) -> dict[str, float | str | None]:
    """Every score that applies to one edit (clips at the same geometry)."""
    if mask is not None and mask.all():
        mask = None  # a global edit has no background to preserve
    row: dict[str, float | str | None] = video_metrics(
        scorer,
        source,
        edited,
        target_caption=instance.target_caption,
        edit_mask=mask,
        target=target,
    )
    from viva_pipelines.rewards.clip_rewards import instruction_following

    row["clip_if"] = float(
        instruction_following(
            scorer, edited[None], instance.target_caption, instance.source_caption
        )[0]
    )
    if judge is not None:
        result = judge_edit(judge, source, edited, instance.instruction, cache=judge_cache)
        if result.ok:
            for key, value in result.scores.as_dict().items():
                row[f"judge_{key}"] = float(value)
            row["judge_avg"] = result.scores.avg
        else:
            row["judge_error"] = result.error
    return row


def _cut_mask(geometry: ClipGeometry, mask: np.ndarray) -> np.ndarray:
    return geometry.cut(mask.astype(np.uint8), nearest=True) > 0


def run_benchmark(
    storage: Storage,
    instances: Sequence[BenchInstance],
    editors: Sequence[Editor],
    scorer: ClipScorer,
    spec: NormaliseSpec,
    *,
    judge: VlmBackend | None = None,
    judge_cache: object | None = None,
    keep_clips: Callable[[BenchInstance], bool] = lambda instance: False,
    log: Callable[[str], None] | None = None,
) -> BenchmarkRun:
    """Edit and score every instance with every editor. ``keep_clips`` selects instances
    whose source, target and edits are returned for previews."""
    rows: list[dict] = []
    clips: dict[str, dict[str, np.ndarray]] = {}
    for instance in tqdm(instances, desc="benchmark"):
        base = {"id": instance.id, "category": instance.category}
        try:
            media = load_media(storage, instance, spec)
        except Exception as exc:  # unreadable media: a failed row per model, the suite goes on
            reason = str(exc) if isinstance(exc, MediaError) else item_failure(exc, instance.id)
            if log:
                log(f"{instance.id}: skipped, {reason}")
            rows += [{**base, "model": e.name, "status": FAILED, "error": reason} for e in editors]
            continue
        for editor in editors:
            row = {**base, "model": editor.name, "status": "ok", "error": None}
            edited = None
            started = time.perf_counter()
            try:
                geometry = editor.geometry
                source = geometry.cut(media.source)
                target = None if media.target is None else geometry.cut(media.target)
                mask = None if media.mask is None else _cut_mask(geometry, media.mask)
                edited = editor.edit(media, instance)
                row["edit_s"] = time.perf_counter() - started
                scores = score_edit(
                    scorer,
                    instance,
                    source,
                    edited,
                    mask=mask,
                    target=target,
                    judge=judge,
                    judge_cache=judge_cache,
                )
                row.update(scores)
            except Exception as exc:  # one failed edit is a recorded row, not a failed suite
                row.update(status=FAILED, error=item_failure(exc, f"{instance.id} / {editor.name}"))
                if log:
                    log(f"{instance.id} / {editor.name}: failed, {row['error']}")
            rows.append(row)
            if keep_clips(instance) and edited is not None:
                kept = clips.setdefault(instance.id, {"source": source})
                if target is not None:
                    kept["target"] = target
                kept[editor.name] = edited
    frame = pd.DataFrame(rows)
    for column in (*CRITERIA, "edit_s", "status", "error"):
        if column not in frame:
            frame[column] = None if column in ("status", "error") else math.nan
    return BenchmarkRun(frame, clips)


# -- tables -----------------------------------------------------------------------------------


def criteria_present(rows: pd.DataFrame) -> list[str]:
    """The criteria with at least one score, in report order."""
    return [c for c in CRITERIA if c in rows and rows[c].notna().any()]


def category_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean of each criterion per (category, model): rows are the categories in suite order
    plus ``average`` (the mean of the category means, so every category weighs the same, as
    in VIE-Bench), columns a ``(model, criterion)`` MultiIndex. PSNRs are capped at
    :data:`PSNR_CAP` and failed rows left out."""
    criteria = criteria_present(rows)
    scored = rows[rows["error"].isna()].copy()
    for column in PSNR_COLUMNS:
        if column in criteria:
            scored[column] = pd.to_numeric(scored[column]).clip(upper=PSNR_CAP)
    scored[criteria] = scored[criteria].apply(pd.to_numeric)
    means = scored.groupby(["category", "model"], sort=False)[criteria].mean()
    table = means.unstack("model").swaplevel(axis=1)
    models = list(dict.fromkeys(rows["model"]))
    table = table.reindex(columns=pd.MultiIndex.from_product([models, criteria]))
    order = [c for c in CATEGORIES if c in table.index]
    table = table.loc[order]
    table.loc["average"] = table.mean(axis=0, skipna=True)
    return table


def markdown_report(table: pd.DataFrame, *, digits: int = 3) -> str:
    """One Markdown table per model (rows: categories; columns: criteria) and a headline
    table of the averages (rows: models)."""
    models = list(dict.fromkeys(table.columns.get_level_values(0)))
    parts = []
    headline = pd.DataFrame(
        {CRITERIA[c]: table.loc["average", (m, c)] for c in table[models[0]].columns}
        for m in models
    )
    headline.index = pd.Index(models, name="model")
    parts.append("### Averages over categories\n\n" + markdown_table(headline.round(digits)))
    for model in models:
        part = table[model].rename(columns=CRITERIA).round(digits)
        part.index.name = "category"
        parts.append(f"### {model}\n\n" + markdown_table(part.fillna("-")))
    return "\n\n".join(parts)


def sanity_problems(table: pd.DataFrame, identity: str = IDENTITY) -> list[str]:
    """What contradicts the identity baseline's known place: last (strictly) on instruction
    following, first (ties allowed) on background preservation. Empty when all is well or
    there is nothing to compare."""
    models = list(dict.fromkeys(table.columns.get_level_values(0)))
    if identity not in models or len(models) < 2:
        return []
    average = table.loc["average"]
    problems = []
    present = set(table.columns.get_level_values(1))
    following = next((c for c in SANITY_IF if c in present), None)
    if following is not None:
        ident = average[(identity, following)]
        beaten = [m for m in models if m != identity and not average[(m, following)] > ident]
        if beaten:
            problems.append(
                f"identity is not last on {CRITERIA[following]}: {', '.join(beaten)} "
                f"score(s) no higher than its {ident:.4f}"
            )
    if SANITY_BG in present:
        ident = average[(identity, SANITY_BG)]
        ahead = [m for m in models if m != identity and average[(m, SANITY_BG)] > ident]
        if ahead:
            problems.append(f"identity is not first on {CRITERIA[SANITY_BG]}: {', '.join(ahead)}")
    return problems


def side_by_side(clips: dict[str, np.ndarray], height: int = 128) -> np.ndarray:
    """Clips ``uint8 [T, h_i, w_i, 3]`` scaled to ``height`` and placed left to right in the
    mapping's order, frame by frame (as many frames as the shortest): a preview video."""
    frames = min(len(clip) for clip in clips.values())
    video = np.stack([grid([[clip[t] for clip in clips.values()]], height) for t in range(frames)])
    return video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]  # even, for yuv420p


def write_report(
    storage: Storage, prefix: str, run: BenchmarkRun, table: pd.DataFrame, *, fps: float = 4
) -> dict[str, str]:
    """Write the scores, the table (columns ``model/criterion``), the Markdown report, one
    side-by-side preview video per kept instance and a PNG of their middle frames under
    ``prefix``; returns the keys written by name."""
    keys = {
        "scores": f"{prefix}/scores.parquet",
        "table": f"{prefix}/table.parquet",
        "report": f"{prefix}/report.md",
    }
    storage.write_parquet(keys["scores"], run.rows)
    flat = table.copy()
    flat.columns = [f"{model}/{criterion}" for model, criterion in table.columns]
    storage.write_parquet(keys["table"], flat.rename_axis("category").reset_index())
    storage.write_bytes(keys["report"], markdown_report(table).encode())
    if run.clips:
        with tempfile.TemporaryDirectory() as tmp:
            for instance_id, clips in run.clips.items():
                local = Path(tmp, f"{instance_id}.mp4")
                write_video(local, side_by_side(clips), fps)
                storage.put_file(local, f"{prefix}/previews/{instance_id}.mp4")
        rows = [[clip[len(clip) // 2] for clip in clips.values()] for clips in run.clips.values()]
        keys["preview"] = f"{prefix}/previews.png"
        storage.write_bytes(keys["preview"], to_png(grid(rows)))
    return keys


# -- the whole evaluation -----------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    """Every model of a benchmark run scored: rows, the per-category table, its report."""

    run: BenchmarkRun
    table: pd.DataFrame
    report: str
    problems: list[str]  # broken sanity rules (see :func:`sanity_problems`)
    models: list[str]


def evaluate_models(
    media: Storage,
    instances: Sequence[BenchInstance],
    model_dir: str | Path,
    lora_dir: str | Path | None,
    cfg: BenchmarkSettings,
    scorer: ClipScorer,
    spec: NormaliseSpec,
    *,
    judge: VlmBackend | None = None,
    judge_cache: object | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """The models ``cfg.models`` names (the model in ``model_dir``, with the LoRA in
    ``lora_dir`` when given, and the identity baseline) edit every instance, on
    ``cfg.device`` with ``cfg``'s sampling settings; scored, tabulated per category, checked
    for sanity. ``cfg.previews_per_category`` instances per category keep their clips."""
    from viva_pipelines.train.distributed import pick_device

    editors = model_editors(
        model_dir,
        lora_dir,
        cfg.models,
        device=str(pick_device(cfg.device, 0)),
        num_steps=cfg.num_steps,
        guidance_scale=cfg.guidance_scale,
        seed=cfg.seed,
    )
    kept = first_per_category(instances, cfg.previews_per_category)
    run = run_benchmark(
        media,
        instances,
        editors,
        scorer,
        spec,
        judge=judge,
        judge_cache=judge_cache,
        keep_clips=lambda instance: instance.id in kept,
        log=log,
    )
    table = category_table(run.rows)
    return BenchmarkResult(
        run,
        table,
        markdown_report(table),
        sanity_problems(table),
        [editor.name for editor in editors],
    )


def log_benchmark(
    storage: Storage, prefix: str, result: BenchmarkResult, versions: dict[str, str]
) -> dict[str, str]:
    """Write the report files under ``prefix`` (:func:`write_report`) and log to the active
    MLflow run: every ``{model}/{category}/{criterion}`` metric, the files as artifacts, the
    versions of what was evaluated and the sanity verdict as tags. Returns the keys written."""
    import mlflow

    from viva_pipelines.tracking import set_tags

    keys = write_report(storage, prefix, result.run, result.table)
    mlflow.log_metrics(
        {
            f"{model}/{category}/{criterion}": float(value)
            for category, row in result.table.iterrows()
            for (model, criterion), value in row.items()
            if value == value  # NaN: not applicable
        }
    )
    set_tags({f"viva.version.{name}": version for name, version in versions.items()})
    set_tags({"viva.benchmark.sanity": "; ".join(result.problems) or "ok"})
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifacts(str(storage.get_dir(prefix, tmp)), "benchmark")
    return keys
