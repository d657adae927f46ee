"""``tracked_masks`` for one shard: objects of every ingested video, tracked, checked, stored.

Outputs under ``tracked_masks/{shard}/``: ``{video_id}/object_{k}.npz`` (array ``mask``,
``bool [T, H, W]``, compressed) and ``manifest.parquet`` with one row per object (kept or
dropped with its reason) and one row for each video that yielded no object.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from viva_pipelines.config.schema import TrackRulesSettings
from viva_pipelines.manifests import FAILED, ManifestResult, item_failure, write_manifest
from viva_pipelines.masks.tracks import track_rejection, track_stats
from viva_pipelines.masks.types import MaskBackend, NoObjects, TrackedObject
from viva_pipelines.storage import Storage
from viva_pipelines.video.annotations import Annotations
from viva_pipelines.video.io import read_video

ASSET = "tracked_masks"
CODE_VERSION = "tracked_masks-1"
KEPT, DROPPED = "kept", "dropped"  # and manifests.FAILED

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
            TrackedObject(
                int(obj["id"]),
                str(obj.get("label", f"object {obj['id']}")),
                annotations.object_mask(int(obj["id"])),
            )
            for obj in annotations.objects
        ]


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
    rules: TrackRulesSettings,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> ManifestResult:
    """Track the objects of every ``ok`` video in ``raw_manifest`` (the shard's ``raw_videos``
    manifest). A video or an object that fails becomes a ``failed`` row with its reason and the
    shard goes on; a video that yields nothing to track is a ``dropped`` row saying why."""
    videos = raw_manifest[raw_manifest["status"] == "ok"]
    rows: list[dict[str, Any]] = []
    for done, video in enumerate(tqdm(videos.itertuples(), total=len(videos), desc=shard), 1):
        base = {
            "video_id": video.video_id,
            "video_key": video.video_key,
            "backend": backend.name,
            "caption": None if pd.isna(video.caption) else video.caption,
        }
        try:
            frames = load_frames(storage, video.video_key)
            objects = backend.track(frames, load_annotations(storage, video), base["caption"])
            if not objects:
                raise NoObjects("nothing detected")
        except NoObjects as exc:
            objects = []
            rows.append({**base, "status": DROPPED, "reason": str(exc)})
        except Exception as exc:
            objects = []
            reason = item_failure(exc, f"tracking {video.video_id}")
            rows.append({**base, "status": FAILED, "reason": reason})
        for obj in objects:
            try:
                row = _object_row(storage, shard, video.video_id, obj, rules)
            except Exception as exc:
                reason = item_failure(exc, f"object {obj.object_id} of {video.video_id}")
                row = {
                    "object_id": obj.object_id,
                    "label": obj.label,
                    "status": FAILED,
                    "reason": reason,
                }
            rows.append({**base, **row})
        if on_progress:
            on_progress(done, len(videos), video.video_id)
    return write_manifest(
        storage, manifest_key(shard), rows, MANIFEST_SCHEMA, sort_by=["video_id", "object_id"]
    )


def videos_without_masks(manifest: pd.DataFrame) -> pd.Series:
    """Why each video of a ``tracked_masks`` manifest has no kept object (video_id → reason):
    the backend found none ("the video has no annotations ...", "nothing detected"), tracking
    failed, or every track was dropped, with the rules that dropped them ("all 3 tracks
    dropped: lost 2, degenerate 1")."""
    reasons = {}
    for video_id, rows in manifest.groupby("video_id", sort=True):
        if (rows["status"] == KEPT).any():
            continue
        objects = rows[rows["object_id"].notna()]
        if objects.empty:
            reasons[video_id] = str(rows["reason"].iloc[0])
            continue
        rules = objects["reason"].astype(str).str.split(":").str[0].value_counts()
        named = ", ".join(f"{rule} {count}" for rule, count in rules.items())
        reasons[video_id] = f"all {len(objects)} tracks dropped: {named}"
    return pd.Series(reasons, dtype="string", name="reason")


def _object_row(
    storage: Storage, shard: str, video_id: str, obj: TrackedObject, rules: TrackRulesSettings
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
