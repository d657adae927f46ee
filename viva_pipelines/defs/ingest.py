"""``raw_videos``: per-shard ingestion, the sensor that finds new uploads, and its job."""

import json

import dagster as dg
import pandas as pd
from dagster_aws.s3 import S3Resource

from viva_pipelines.config import Settings
from viva_pipelines.defs.execution import step_options
from viva_pipelines.defs.jobs import SHARD_JOB
from viva_pipelines.defs.partitions import video_shards
from viva_pipelines.defs.resources import StorageResource
from viva_pipelines.ingest.raw_videos import CODE_VERSION, IngestOptions, ingest_shard
from viva_pipelines.ingest.shards import (
    load_registry,
    load_skipped,
    plan_shard_runs,
    scan_and_register,
    shard_members,
)
from viva_pipelines.ingest.sources import skipped_text
from viva_pipelines.manifests import markdown_table
from viva_pipelines.previews import markdown_image
from viva_pipelines.video.normalise import NormaliseSpec


def ingest_options(settings: Settings) -> IngestOptions:
    cfg = settings.ingest
    return IngestOptions(
        spec=NormaliseSpec(
            width=cfg.width,
            height=cfg.height,
            fps=cfg.fps,
            max_frames=cfg.max_frames,
            resize=cfg.resize,
        ),
        limits=cfg.limits,
        crf=cfg.crf,
    )


def build_ingest_defs(settings: Settings) -> dg.Definitions:
    options = ingest_options(settings)

    @dg.asset(
        partitions_def=video_shards,
        code_version=CODE_VERSION,
        group_name="data",
        kinds={"video", "parquet"},
        **step_options(settings, "raw_videos"),
    )
    def raw_videos(
        context: dg.AssetExecutionContext, storage: StorageResource, video_source: StorageResource
    ) -> dg.MaterializeResult:
        """Source videos of one shard, probed, checksummed and normalised (size, fps, length),
        with their sidecar annotations; ``manifest.parquet`` has one row per input file, ``ok``
        or ``rejected`` with the reason."""
        shard = context.partition_key
        store = storage.get()
        members = shard_members(load_registry(store), shard)
        if members.empty:
            raise dg.Failure(
                f"shard {shard} has no registered videos; run the sensor or `viva ingest`",
                allow_retries=False,
            )

        def progress(done: int, total: int, row: dict) -> None:
            status = row["status"] if row["status"] == "ok" else f"rejected: {row['reason']}"
            context.log.info(f"[{done}/{total}] {row['source_key']}: {status}")

        result = ingest_shard(store, video_source.get(), shard, members, options, progress)
        metadata = _shard_metadata(result.manifest, result.manifest_uri, result.preview_png)
        metadata["source_files_skipped"] = dg.MetadataValue.json(load_skipped(store))
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(result.data_version),
        )

    @dg.sensor(
        job_name=SHARD_JOB,
        minimum_interval_seconds=settings.sensor.interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
    )
    def raw_video_sensor(
        context: dg.SensorEvaluationContext,
        storage: StorageResource,
        video_source: StorageResource,
        s3: S3Resource,
    ) -> dg.SensorResult:
        """Finds new files in the video source, assigns them to shards and requests one run per
        shard that grew. The cursor remembers each shard's size at its last request."""
        source = video_source.get()
        registry, new = scan_and_register(
            storage.get(),
            source,
            settings.sources.raw_videos.extensions,
            settings.ingest.shard_size,
            s3_client=s3.get_client() if source.is_remote else None,
        )
        known = set(context.instance.get_dynamic_partitions(video_shards.name))
        new_shards = sorted(set(registry["shard"]) - known)
        runs, cursor = plan_shard_runs(
            registry, json.loads(context.cursor or "{}"), settings.sensor.max_runs_per_tick
        )
        skipped = load_skipped(storage.get())
        if skipped:
            context.log.info(f"skipped (not a listed extension) {skipped_text(skipped)}")
        if new.shape[0]:
            shown = ", ".join(new_shards[:3]) + (
                f", ... {new_shards[-1]}" if len(new_shards) > 3 else ""
            )
            context.log.info(
                f"{len(new)} new videos; {len(new_shards)} new shards: {shown or 'none'}"
            )
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=r.shard, run_key=r.run_key) for r in runs],
            dynamic_partitions_requests=[video_shards.build_add_request(new_shards)]
            if new_shards
            else [],
            cursor=json.dumps(cursor, sort_keys=True),
        )

    return dg.Definitions(assets=[raw_videos], sensors=[raw_video_sensor])


def _shard_metadata(manifest: pd.DataFrame, manifest_uri: str, preview: bytes | None) -> dict:
    ok = manifest[manifest["status"] == "ok"]
    rejected = manifest[manifest["status"] == "rejected"]
    metadata: dict = {
        "videos_ok": len(ok),
        "videos_rejected": len(rejected),
        "total_duration_s": float(ok["duration_s"].sum()) if len(ok) else 0.0,
        "source_duration_s": float(ok["source_duration_s"].sum()) if len(ok) else 0.0,
        "with_annotations": int(ok["annotations_key"].notna().sum()),
        "manifest": dg.MetadataValue.path(manifest_uri),
    }
    if len(rejected):
        table = markdown_table(rejected[["source_key", "reason"]], index=False)
        metadata["rejected_reasons"] = dg.MetadataValue.md(table)
    if preview:
        metadata["preview"] = dg.MetadataValue.md(markdown_image(preview, "first frames"))
    return metadata
