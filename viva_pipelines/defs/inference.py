"""``edited_videos``: the ``inference`` requests file edited whole with a configured model."""

import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from viva_pipelines.config import Settings
from viva_pipelines.defs.execution import step_options
from viva_pipelines.defs.lineage import UPSTREAM_EVENTS, LineageError, resolve_target
from viva_pipelines.defs.resources import MlflowResource, StorageResource
from viva_pipelines.defs.training import SFT_CHECKPOINT, SFT_PREFIX, latest_data_version
from viva_pipelines.manifests import FAILED, markdown_table, reason_counts
from viva_pipelines.previews import markdown_image
from viva_pipelines.storage import Storage
from viva_pipelines.tracking import log_metrics, log_params, set_tags

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
        from mlflow import MlflowClient

        from viva_pipelines.inference.batch import edit_stored_requests
        from viva_pipelines.model.pipeline import VivaEditPipeline, resolve_model
        from viva_pipelines.train.distributed import pick_device

        store = storage.get()
        s3 = settings.storage.s3
        root = Storage(cfg.root, endpoint_url=s3.endpoint_url, region_name=s3.region_name)
        client = MlflowClient(mlflow.tracking_uri)
        with tempfile.TemporaryDirectory(prefix="viva-edit-") as tmp:
            if cfg.model is None:
                version = latest_data_version(context, SFT_CHECKPOINT)
                model_uri = store.uri(f"{SFT_PREFIX}/{version}/model")
                model_dir = Path(store.local_dir(model_uri, Path(tmp, "model")))
            else:
                model_uri = cfg.model
                model_dir = resolve_model(cfg.model, tracking_uri=mlflow.tracking_uri)
            lora_dir = cfg.lora and resolve_model(
                cfg.lora, tracking_uri=mlflow.tracking_uri, lora=True
            )
            events = _model_events(context, client, cfg.model, cfg.lora)
            device = str(pick_device(cfg.device, 0))

            def load() -> VivaEditPipeline:
                pipeline = VivaEditPipeline.from_pretrained(model_dir, device=device)
                return pipeline.load_lora(lora_dir) if lora_dir else pipeline

            def say(result: dict[str, Any]) -> None:
                detail = (
                    f"{result['frames']} frames in {result['seconds']} s"
                    if result["status"] == "ok"
                    else result["reason"]
                )
                context.log.info(f"line {result['line']}: {result['status']}: {detail}")

            with mlflow.start_run(context) as run:
                prefix = f"{EDITED_PREFIX}/{run.info.run_id}"
                outcome = edit_stored_requests(
                    load, cfg.requests, root, store, prefix, Path(tmp, "work"),
                    endpoint_url=s3.endpoint_url, on_result=say, progress=False,
                    preview_frames=cfg.preview_frames, crf=cfg.crf,
                    preserve_unchanged=cfg.preserve_unchanged, seed=cfg.seed,
                    window_batch=cfg.window_batch,
                    num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale,
                )  # fmt: skip
                rows = outcome.manifest
                failed = rows["status"].eq(FAILED)
                log_params({"requests": cfg.requests, "model": model_uri, "lora": cfg.lora or "",
                            "preserve_unchanged": cfg.preserve_unchanged, "crf": cfg.crf})  # fmt: skip
                log_metrics({"requests": len(rows), "edited": int((~failed).sum()),
                             "failed": int(failed.sum())})  # fmt: skip
                set_tags({"viva.model_uri": model_uri, "viva.lora_uri": cfg.lora or ""})
                _log_artifacts(outcome)
        shown = outcome.previews[:SHOWN_PREVIEWS]
        table = rows[["line", "status", "video", "instruction", "out", "frames", "reason"]]
        metadata: dict[str, Any] = {
            "requests": len(rows),
            "edited": int((~failed).sum()),
            "failed": int(failed.sum()),
            "failures_by_reason": dg.MetadataValue.json(reason_counts(rows["reason"])),
            "manifest": dg.MetadataValue.path(store.uri(outcome.manifest_key)),
            "model_uri": model_uri,
            "lora_uri": cfg.lora or "none",
            UPSTREAM_EVENTS: dg.MetadataValue.json(events),
            "outcomes": dg.MetadataValue.md(markdown_table(table, index=False)),
        }
        if shown:
            metadata["preview"] = dg.MetadataValue.md(
                "source | edit\n\n"
                + "\n\n".join(markdown_image(png, f"line {line}") for line, png in shown)
            )
        return dg.MaterializeResult(metadata=metadata)

    return dg.Definitions(assets=[edited_videos])


def _log_artifacts(outcome) -> None:
    """The manifest and the previews (not the videos: they stay in storage only)."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        outcome.manifest.to_parquet(Path(folder, "manifest.parquet"))
        for line, png in outcome.previews:
            Path(folder, f"line-{line}.png").write_bytes(png)
        mlflow.log_artifacts(folder, EDITED_PREFIX)


def _model_events(
    context: dg.AssetExecutionContext, client: Any, model: str | None, lora: str | None
) -> dict[str, int]:
    """The materializations that made the model and LoRA used (asset → event storage id), so
    lineage follows what was edited with rather than the latest ones: the latest
    sft_checkpoint for the default model, the asset behind a ``models:/`` or ``runs:/`` URI;
    a plain directory has none (it is named in the metadata instead)."""
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
