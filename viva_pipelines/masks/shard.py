"""``tracked_masks`` for one shard: objects of every ingested video, tracked, checked, stored.

Outputs under ``tracked_masks/{shard}/``: ``{video_id}/object_{k}.npz`` (array ``mask``,
``bool [T, H, W]``, compressed) and ``manifest.parquet`` with one row per object (kept or
dropped with its reason) and one row for each video that yielded no object.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from viva_pipelines.manifests import ManifestResult, write_manifest
from viva_pipelines.masks.tracks import TrackRules, track_rejection, track_stats
from viva_pipelines.masks.types import MaskBackend, NoObjects, TrackedObject
from viva_pipelines.storage import Storage, is_storage_outage
from viva_pipelines.video.annotations import Annotations
from viva_pipelines.video.io import read_video

log = logging.getLogger(__name__)

ASSET = "tracked_masks"
CODE_VERSION = "tracked_masks-1"
KEPT, DROPPED = "kept", "dropped"

MANIFEST_SCHEMA = {
    "video_id": "string", "object_id": "Int64", "label": "string", "status": "string",
    "reason": "string", "backend": "string", "score": "Float64", "mask_key": "string",
    "video_key": "string", "caption": "string", "frames": "Int64", "area_fraction": "Float64",
    "visible_fraction": "Float64", "stability": "Float64", "areas": "string", "bboxes": "string",
}  # fmt: skip


class AnnotationsBackend:
    """Masks that came with the data (sidecars carried along by ``raw_videos``)."""

    name = "annotations"

    def track(
        self, frames: np.ndarray, annotations: Annotations | None, caption: str | None
    ) -> list[TrackedObject]:
        if annotations is None:
            raise NoObjects("the video has no annotations (use the sam2 backend to track it)")
        if annotations.masks.shape != frames.shape[:3]:
            raise NoObjects(
                f"annotation masks {annotations.masks.shape} do not match frames {frames.shape[:3]}"
            )
        return [
            TrackedObject(int(obj["id"]), str(obj.get("label", f"object {obj['id']}")),
                          annotations.object_mask(int(obj["id"])))
            for obj in annotations.objects
        ]  # fmt: skip


def shard_prefix(shard: str) -> str:
    return f"{ASSET}/{shard}"


def manifest_key(shard: str) -> str:
    return f"{shard_prefix(shard)}/manifest.parquet"


def save_mask(storage: Storage, key: str, mask: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, mask=np.asarray(mask, dtype=bool))
    storage.write_bytes(key, buffer.getvalue())


def load_mask(storage: Storage, key: str) -> np.ndarray:
    """``bool [T, H, W]`` saved by :func:`save_mask`."""
    with np.load(io.BytesIO(storage.read_bytes(key)), allow_pickle=False) as npz:
        return npz["mask"].astype(bool)


def load_frames(storage: Storage, key: str) -> np.ndarray:
    """Decode a stored video: ``uint8 [T, H, W, 3]``."""
    with storage.local_path(key) as local:
        return read_video(local)[0]


def load_annotations(storage: Storage, row: Any) -> Annotations | None:
    if pd.isna(row.annotations_key) or pd.isna(row.masks_key):
        return None
    return Annotations.from_bytes(
        storage.read_bytes(row.annotations_key), storage.read_bytes(row.masks_key)
    )


def track_shard(
    storage: Storage,
    shard: str,
    raw_manifest: pd.DataFrame,
    backend: MaskBackend,
    rules: TrackRules,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> ManifestResult:
    """Track the objects of every ``ok`` video in ``raw_manifest`` (the shard's ``raw_videos``
    manifest). A video that fails is recorded and the shard goes on."""
    videos = raw_manifest[raw_manifest["status"] == "ok"]
    rows: list[dict[str, Any]] = []
    for done, video in enumerate(tqdm(videos.itertuples(), total=len(videos), desc=shard), 1):
        base = {"video_id": video.video_id, "video_key": video.video_key, "backend": backend.name,
                "caption": None if pd.isna(video.caption) else video.caption}  # fmt: skip
        try:
            frames = load_frames(storage, video.video_key)
            objects = backend.track(frames, load_annotations(storage, video), base["caption"])
            if not objects:
                raise NoObjects("no object found")
        except NoObjects as exc:
            rows.append({**base, "status": DROPPED, "reason": str(exc)})
            continue
        except Exception as exc:  # a broken video must not stop the shard
            if is_storage_outage(exc):
                raise  # the storage is unreachable, the video is fine: fail the step (retried)
            log.exception("tracking failed for %s", video.video_id)
            rows.append({**base, "status": DROPPED, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        for obj in objects:
            rows.append({**base, **_object_row(storage, shard, video.video_id, obj, rules)})
        if on_progress:
            on_progress(done, len(videos), video.video_id)
    return write_manifest(
        storage, manifest_key(shard), rows, MANIFEST_SCHEMA, sort_by=["video_id", "object_id"]
    )


def _object_row(
    storage: Storage, shard: str, video_id: str, obj: TrackedObject, rules: TrackRules
) -> dict[str, Any]:
    stats = track_stats(obj.masks)
    reason = track_rejection(stats, rules)
    key = f"{shard_prefix(shard)}/{video_id}/object_{obj.object_id}.npz"
    if reason is None:
        save_mask(storage, key, obj.masks)
    else:
        storage.delete(key)
    return {
        "object_id": obj.object_id,
        "label": obj.label,
        "status": KEPT if reason is None else DROPPED,
        "reason": reason,
        "score": obj.score,
        "mask_key": key if reason is None else None,
        "frames": len(stats.areas),
        "area_fraction": stats.area_fraction,
        "visible_fraction": stats.visible_fraction,
        "stability": stats.stability,
        "areas": json.dumps(stats.areas),
        "bboxes": json.dumps(stats.bboxes),
    }
