"""``edited_videos``: the ``inference`` requests file edited whole with a configured model."""

import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from viva_pipelines.config import Settings
from viva_pipelines.defs.execution import step_options
from viva_pipelines.defs.lineage import UPSTREAM_EVENTS, LineageError, resolve_target
from viva_pipelines.defs.resources import MlflowResource, StorageResource
from viva_pipelines.defs.training import SFT_CHECKPOINT, latest_data_version
from viva_pipelines.manifests import markdown_table, reason_counts
from viva_pipelines.previews import markdown_image
from viva_pipelines.storage import Storage
from viva_pipelines.train.runs import model_key, sft_run

CODE_VERSION = "edited_videos-1"
EDITED_PREFIX = "edited_videos"
#: Previews shown in the asset's metadata (all of them are in storage and MLflow).
SHOWN_PREVIEWS = 4


def build_inference_defs(settings: Settings) -> dg.Definitions:
    cfg = settings.inference

    @dg.asset(
        deps=[SFT_CHECKPOINT],
        code_version=CODE_VERSION,
        group_name="benchmark",
        kinds={"pytorch", "mlflow"},
        **step_options(settings, "edited_videos"),
    )
    def edited_videos(
        context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        """Every request of ``inference.requests`` (JSONL, local or S3) edited whole, at the
        source's length, size and frame rate, by ``inference.model`` (default: the latest
        sft_checkpoint) with ``inference.lora`` when set. Writes the videos, a manifest with
        each request's status (a bad line or video is a failed row with its reason), side-by-
        side previews and an MLflow run; ``viva lineage edited_videos`` leads from each video to
        the model version that made it, its dataset and the raw files' checksums."""
        if cfg.requests is None:
            raise dg.Failure("inference.requests is not set: nothing to edit", allow_retries=False)
        from viva_pipelines.inference.batch import log_edits, run_edit_requests
        from viva_pipelines.model.requests import MissingInputError
        from viva_pipelines.model.whole_video import outcome_line

        store, s3 = storage.get(), settings.storage.s3
        root = Storage(cfg.root, endpoint_url=s3.endpoint_url, region_name=s3.region_name)
        try:
            with tempfile.TemporaryDirectory(prefix="viva-edit-") as tmp:
                model_uri, model_dir = _model(context, store, cfg.model, mlflow, Path(tmp, "model"))
                lora = _lora(cfg.lora, mlflow)
                events = _model_events(context, mlflow, cfg.model, cfg.lora)
                with mlflow.start_run(context) as run:
                    outcome = run_edit_requests(
                        cfg,
                        model_dir,
                        lora,
                        root,
                        store,
                        f"{EDITED_PREFIX}/{run.info.run_id}",
                        Path(tmp, "work"),
                        endpoint_url=s3.endpoint_url,
                        on_result=lambda result: context.log.info(outcome_line(result)),
                    )
                    log_edits(outcome, cfg, model_uri)
        except MissingInputError as exc:  # the retry policy is for outages; this is not one
            raise dg.Failure(str(exc), allow_retries=False) from None
        return dg.MaterializeResult(metadata=_metadata(store, outcome, model_uri, cfg.lora, events))

    return dg.Definitions(assets=[edited_videos])


def _lora(lora: str | None, mlflow: MlflowResource) -> Path | None:
    """The local directory of the configured Edit-GRPO LoRA, or None without one."""
    from viva_pipelines.model.requests import resolve_model

    return resolve_model(lora, tracking_uri=mlflow.tracking_uri, lora=True) if lora else None


def _model(
    context: dg.AssetExecutionContext,
    store: Storage,
    model: str | None,
    mlflow: MlflowResource,
    scratch: Path,
) -> tuple[str, Path]:
    """(URI, local directory) of the model to edit with: ``model`` as configured, or the
    latest sft_checkpoint's."""
    from viva_pipelines.model.requests import resolve_model

    if model is not None:
        return model, resolve_model(model, tracking_uri=mlflow.tracking_uri)
    version = latest_data_version(context, SFT_CHECKPOINT)
    uri = store.uri(model_key(sft_run(version)))
    return uri, Path(store.local_dir(uri, scratch))


def _metadata(
    store: Storage, outcome: Any, model_uri: str, lora: str | None, events: dict[str, int]
) -> dict[str, Any]:
    """Counts, failures by reason, the outcomes table, the first previews, what was edited
    with and the materializations it came from (for lineage)."""
    rows = outcome.manifest
    table = rows[["line", "status", "video", "instruction", "out", "frames", "reason"]]
    metadata: dict[str, Any] = {
        **outcome.counts,
        "failures_by_reason": dg.MetadataValue.json(reason_counts(rows["reason"])),
        "manifest": dg.MetadataValue.path(store.uri(outcome.manifest_key)),
        "model_uri": model_uri,
        "lora_uri": lora or "none",
        UPSTREAM_EVENTS: dg.MetadataValue.json(events),
        "outcomes": dg.MetadataValue.md(markdown_table(table, index=False)),
    }
    if shown := outcome.previews[:SHOWN_PREVIEWS]:
        metadata["preview"] = dg.MetadataValue.md(
            "source | edit\n\n"
            + "\n\n".join(markdown_image(png, f"line {line}") for line, png in shown)
        )
    return metadata


def _model_events(
    context: dg.AssetExecutionContext, mlflow: MlflowResource, model: str | None, lora: str | None
) -> dict[str, int]:
    """The materializations that made the model and LoRA used (asset → event storage id), so
    lineage follows what was edited with rather than the latest ones: the latest
    sft_checkpoint for the default model, the asset behind a ``models:/`` or ``runs:/`` URI;
    a plain directory has none (it is named in the metadata instead)."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow.tracking_uri)
    events: dict[str, int] = {}
    if model is None:
        record = context.instance.fetch_materializations(SFT_CHECKPOINT, limit=1).records[0]
        events["sft_checkpoint"] = record.storage_id
    for uri in filter(None, (model, lora)):
        if not uri.startswith(("models:/", "runs:/")):
            continue
        try:
            record = resolve_target(context.instance, uri, client)
        except LineageError as exc:
            context.log.warning(f"lineage: {exc}")
            continue
        events[record.asset_key.to_user_string()] = record.storage_id
    return events
