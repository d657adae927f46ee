"""Edit-pair data construction: ``tracked_masks`` → ``synthetic_pairs`` (per shard) →
``qc_dataset`` (all shards) with its blocking checks."""

import dagster as dg

from viva_pipelines.config import Settings
from viva_pipelines.defs.execution import step_options
from viva_pipelines.defs.partitions import video_shards
from viva_pipelines.defs.resources import StorageResource, vlm_backend
from viva_pipelines.ingest import raw_videos as ingest
from viva_pipelines.manifests import FAILED, markdown_table, reason_counts
from viva_pipelines.masks import shard as masks
from viva_pipelines.masks.types import MaskBackend
from viva_pipelines.pairs import shard as pairs
from viva_pipelines.pairs.types import EditBackend
from viva_pipelines.previews import markdown_image
from viva_pipelines.qc import checks
from viva_pipelines.qc import dataset as qc
from viva_pipelines.qc.external import external_image_rows
from viva_pipelines.qc.review import make_pair_reviewer
from viva_pipelines.storage import Storage


def mask_backend(settings: Settings) -> MaskBackend:
    if settings.masks.backend == "annotations":
        return masks.AnnotationsBackend()
    if not settings.models.grounding_dino:
        raise dg.Failure(
            "masks.backend sam2 needs models.grounding_dino (a path or hub id)", allow_retries=False
        )
    from viva_pipelines.masks.sam2_backend import Sam2MaskBackend, Sam2Tracker

    models = settings.models
    tracker = Sam2Tracker(settings.masks.sam2, models.grounding_dino, models.sam2)
    return Sam2MaskBackend(tracker, settings.masks.phrases)


def edit_backend(settings: Settings) -> EditBackend:
    if settings.pairs.backend == "opencv":
        from viva_pipelines.embedded.opencv_backend import OpenCVBackend

        return OpenCVBackend()
    if not settings.models.inpainting:
        raise dg.Failure(
            "pairs.backend diffusers needs models.inpainting (a path or hub id)",
            allow_retries=False,
        )
    from viva_pipelines.pairs.diffusers_backend import DiffusersBackend

    models = settings.models
    return DiffusersBackend(
        settings.pairs.diffusers, models.inpainting, models.img2img, seed=settings.pairs.seed
    )


def pair_reviewer(settings: Settings, storage: Storage) -> qc.Reviewer | None:
    """The VLM reviewer from ``qc.vlm``, answers cached in storage; ``None`` when disabled."""
    vlm = settings.qc.vlm
    if not vlm.enabled:
        return None
    backend = vlm_backend(vlm, storage)
    return make_pair_reviewer(backend, storage, vlm.max_frames)


def _pairs_metadata(result, preview: bytes | None, gaps) -> dict:
    m = result.manifest
    shown = markdown_image(preview, "source | target | mask") if preview else None
    return {
        "preview": dg.MetadataValue.md(shown) if shown else "no pairs",
        "pairs": int((m["status"] == "ok").sum()),
        "failed": int((m["status"] == FAILED).sum()),
        "failures": dg.MetadataValue.json(reason_counts(_failed(m)["reason"])),
        "videos_without_pairs": dg.MetadataValue.json(
            reason_counts(m.loc[m["status"] == pairs.NO_PAIRS, "reason"])
        ),
        "videos_without_local_pairs": dg.MetadataValue.json(reason_counts(gaps)),
        "pairs_by_type": dg.MetadataValue.json(
            m.loc[m["status"] == "ok", "edit_type"].value_counts().to_dict()
        ),
        "manifest": dg.MetadataValue.path(result.manifest_uri),
    }


def _qc_metadata(result: qc.QcResult) -> dict:
    accepted, manifest = result.accepted, result.manifest
    return {
        "accepted_video_pairs": int((accepted["modality"] == "video").sum()),
        "accepted_image_pairs": int((accepted["modality"] == "image").sum()),
        "rejected_pairs": int((manifest["status"] == qc.REJECTED).sum()),
        "failures": dg.MetadataValue.json(reason_counts(_failed(manifest)["reason"])),
        "by_edit_type": dg.MetadataValue.md(markdown_table(result.summary())),
        "rejection_reasons": dg.MetadataValue.json(result.rejection_reasons().to_dict()),
        "manifest": dg.MetadataValue.path(result.manifest_uri),
    }


def _progress(context: dg.AssetExecutionContext):
    def log(done: int, total: int, item: str) -> None:
        context.log.info(f"[{done}/{total}] {item}")

    return log


def _failed(manifest):
    """The rows of items that raised (see ``manifests.item_failure``)."""
    return manifest[manifest["status"] == FAILED]


def _read_upstream(storage, key: str, what: str, shard: str):
    if not storage.exists(key):
        raise dg.Failure(
            f"{what} of {shard} is missing ({key}); materialize it first", allow_retries=False
        )
    return storage.read_parquet(key)


def build_data_defs(settings: Settings) -> dg.Definitions:
    # A shard whose raw_videos was materialized by any route (the sensor's job, the UI, a
    # backfill) flows on: eager reacts only to new upstream updates, so enabling the
    # automation sensor never re-runs what is already up to date.
    flow_on = dg.AutomationCondition.eager()

    @dg.asset(
        partitions_def=video_shards,
        deps=["raw_videos"],
        code_version=masks.CODE_VERSION,
        group_name="data",
        kinds={"numpy", "parquet"},
        automation_condition=flow_on,
        **step_options(settings, "tracked_masks"),
    )
    def tracked_masks(
        context: dg.AssetExecutionContext, storage: StorageResource
    ) -> dg.MaterializeResult:
        """Objects of every ingested video, tracked through time (backend from conf), with
        per-object area, bbox and stability; lost or degenerate tracks dropped with a reason."""
        store, shard = storage.get(), context.partition_key
        raw = _read_upstream(store, ingest.manifest_key(shard), "raw_videos", shard)
        result = masks.track_shard(
            store, shard, raw, mask_backend(settings), settings.masks.rules, _progress(context)
        )
        m = result.manifest
        kept = m[m["status"] == masks.KEPT]
        without = masks.videos_without_masks(m)
        if len(without):
            context.log.warning(
                f"{len(without)} videos have no masks: {reason_counts(without)}; they get"
                " global edit pairs only (masks.backend sam2 tracks objects in any footage)"
            )
        return dg.MaterializeResult(
            metadata={
                "objects_kept": len(kept),
                "objects_dropped": int(
                    (m["object_id"].notna() & (m["status"] == masks.DROPPED)).sum()
                ),
                "videos_without_masks": dg.MetadataValue.json(reason_counts(without)),
                "failures": dg.MetadataValue.json(reason_counts(_failed(m)["reason"])),
                "mean_stability": float(kept["stability"].mean()) if len(kept) else 0.0,
                "drop_reasons": dg.MetadataValue.json(
                    reason_counts(m.loc[m["status"] == masks.DROPPED, "reason"])
                ),
                "manifest": dg.MetadataValue.path(result.manifest_uri),
            },
            data_version=dg.DataVersion(result.data_version),
        )

    @dg.asset(
        partitions_def=video_shards,
        deps=["raw_videos", tracked_masks],
        code_version=pairs.CODE_VERSION,
        group_name="data",
        kinds={"video", "parquet"},
        automation_condition=flow_on,
        **step_options(settings, "synthetic_pairs"),
    )
    def synthetic_pairs(
        context: dg.AssetExecutionContext, storage: StorageResource
    ) -> dg.MaterializeResult:
        """Source/target video pairs with edit mask, instruction and captions for every
        configured edit type, and their rule-QC metrics."""
        store, shard = storage.get(), context.partition_key
        raw = _read_upstream(store, ingest.manifest_key(shard), "raw_videos", shard)
        tracks = _read_upstream(store, masks.manifest_key(shard), "tracked_masks", shard)
        backend, progress = edit_backend(settings), _progress(context)
        result = pairs.pair_shard(
            store, shard, raw, tracks, backend, settings.pairs, settings.ingest.crf, progress
        )
        preview = pairs.write_preview(store, shard, result.manifest)
        gaps = pairs.local_edit_gaps(raw, tracks, result.manifest)
        return dg.MaterializeResult(
            metadata=_pairs_metadata(result, preview, gaps),
            data_version=dg.DataVersion(result.data_version),
        )

    @dg.asset(
        deps=[dg.AssetDep(synthetic_pairs, partition_mapping=dg.AllPartitionMapping())],
        code_version=qc.CODE_VERSION,
        group_name="data",
        kinds={"parquet"},
        **step_options(settings, "qc_dataset"),  # retried: the VLM review is an endpoint
    )
    def qc_dataset(
        context: dg.AssetExecutionContext, storage: StorageResource
    ) -> dg.MaterializeResult:
        """Every shard's pairs through rule QC (and the VLM review when enabled), split
        train/val by source video, plus image-editing pairs from accepted video pairs."""
        store = storage.get()
        shards = sorted(context.instance.get_dynamic_partitions(video_shards.name))
        present = [s for s in shards if store.exists(pairs.manifest_key(s))]
        if len(present) < len(shards):
            context.log.warning(f"{len(shards) - len(present)} shards have no synthetic_pairs yet")
        if not present:
            raise dg.Failure(
                "no shard has synthetic_pairs yet; materialize the shards first",
                allow_retries=False,
            )
        result = qc.build_qc_dataset(
            store,
            (store.read_parquet(pairs.manifest_key(s)) for s in present),
            settings.qc,
            pair_reviewer(settings, store),
            _external_rows(store),
        )
        return dg.MaterializeResult(
            metadata={"shards": len(present), **_qc_metadata(result)},
            data_version=dg.DataVersion(result.data_version),
        )

    def _external_rows(store: Storage) -> list[dict]:
        if not settings.qc.image_manifest:
            return []
        return external_image_rows(
            store,
            settings.qc.image_manifest,
            val_fraction=settings.qc.val_fraction,
            split_seed=settings.qc.split_seed,
            endpoint_url=settings.storage.s3.endpoint_url,
        )

    def _check(passed_and_text: tuple[bool, str]) -> dg.AssetCheckResult:
        passed, text = passed_and_text
        return dg.AssetCheckResult(passed=passed, metadata={"result": text})

    def _manifest(storage: StorageResource):
        return storage.get().read_parquet(qc.MANIFEST_KEY)

    @dg.asset_check(asset=qc_dataset, blocking=True)
    def train_split_non_empty(storage: StorageResource) -> dg.AssetCheckResult:
        return _check(checks.train_split_non_empty(_manifest(storage)))

    @dg.asset_check(asset=qc_dataset, blocking=True)
    def every_edit_type_present(storage: StorageResource) -> dg.AssetCheckResult:
        return _check(checks.edit_types_present(_manifest(storage), settings.pairs.edit_types))

    @dg.asset_check(asset=qc_dataset, blocking=True)
    def no_video_in_two_splits(storage: StorageResource) -> dg.AssetCheckResult:
        return _check(checks.no_video_in_two_splits(_manifest(storage)))

    @dg.asset_check(asset=qc_dataset, blocking=True)
    def referenced_files_exist(storage: StorageResource) -> dg.AssetCheckResult:
        return _check(checks.referenced_files_exist(storage.get(), _manifest(storage)))

    return dg.Definitions(
        assets=[tracked_masks, synthetic_pairs, qc_dataset],
        asset_checks=[
            train_split_non_empty,
            every_edit_type_present,
            no_video_in_two_splits,
            referenced_files_exist,
        ],
    )
