"""Ingest one shard of raw videos: probe, checksum, normalise, copy annotations, write manifest.

Every input file ends as one manifest row, ``ok`` or ``rejected`` with a reason; one bad file
never stops the shard. Outputs land under ``raw_videos/{shard}/`` in storage:
``{video_id}.mp4`` (normalised), ``{video_id}.json`` / ``{video_id}.masks.npz`` (annotations,
aligned with the normalised frames), ``manifest.parquet`` and ``preview.png``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from viva_pipelines.config.schema import LimitsSettings
from viva_pipelines.manifests import content_hash, one_line_reason, write_manifest
from viva_pipelines.previews import grid, to_png
from viva_pipelines.storage import PathEscapeError, Storage, is_storage_outage, sha256_file
from viva_pipelines.video.annotations import (
    AnnotationError,
    Annotations,
    annotations_from_pngs,
    png_dir_key,
    sidecar_keys,
)
from viva_pipelines.video.io import write_video
from viva_pipelines.video.normalise import (
    NormalisedVideo,
    NormaliseSpec,
    decode_normalised,
    normalise_masks,
)
from viva_pipelines.video.probe import VideoRejected

log = logging.getLogger(__name__)

ASSET = "raw_videos"
OK, REJECTED = "ok", "rejected"
#: Bumped whenever the bytes this module writes for the same input change.
CODE_VERSION = "raw_videos-2"


@dataclass(frozen=True)
class IngestOptions:
    spec: NormaliseSpec
    limits: LimitsSettings
    crf: int
    preview_videos: int = 8


@dataclass
class ShardIngestResult:
    shard: str
    manifest: pd.DataFrame
    manifest_uri: str
    data_version: str
    preview_png: bytes | None

    @property
    def ok(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == OK]

    @property
    def rejected(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == REJECTED]


def shard_prefix(shard: str) -> str:
    return f"{ASSET}/{shard}"


def manifest_key(shard: str) -> str:
    return f"{shard_prefix(shard)}/manifest.parquet"


#: Where the source lives is left out of the data version, so moving the source folder does
#: not invalidate downstream assets.
VERSION_EXCLUDES = ("source_uri",)


def manifest_data_version(manifest: pd.DataFrame) -> str:
    """Content hash of a (stored) manifest: same rows in any order → same version; the
    same value :func:`ingest_shard` records."""
    return content_hash(
        manifest.astype(MANIFEST_SCHEMA), sort_by="video_id", exclude=VERSION_EXCLUDES
    )


def ingest_shard(
    storage: Storage,
    source: Storage,
    shard: str,
    members: pd.DataFrame,
    options: IngestOptions,
    on_progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> ShardIngestResult:
    """Ingest the ``members`` (rows of the shard registry) of ``shard`` from ``source``.

    ``on_progress(done, total, row)`` is called after each file, for orchestration logs.
    """
    rows: list[dict[str, Any]] = []
    thumbnails: list[np.ndarray] = []
    total = len(members)
    for done, member in enumerate(tqdm(members.itertuples(), total=total, desc=shard), 1):
        row = _ingest_one(storage, source, shard, member.key, member.video_id, options)
        if row["status"] == OK and len(thumbnails) < options.preview_videos:
            thumbnails.append(row.pop("_first_frame"))
        row.pop("_first_frame", None)
        rows.append(row)
        if on_progress:
            on_progress(done, total, row)
    written = write_manifest(
        storage,
        manifest_key(shard),
        rows,
        MANIFEST_SCHEMA,
        sort_by="video_id",
        exclude=VERSION_EXCLUDES,
    )
    preview = to_png(grid([thumbnails])) if thumbnails else None
    if preview:
        storage.write_bytes(f"{shard_prefix(shard)}/preview.png", preview)
    return ShardIngestResult(
        shard, written.manifest, written.manifest_uri, written.data_version, preview
    )


#: Column → pandas dtype. Nullable dtypes keep a manifest identical after a Parquet round trip,
#: which its content hash (the data version) relies on.
MANIFEST_SCHEMA = {
    "video_id": "string", "source_key": "string", "source_uri": "string",
    "status": "string", "reason": "string",
    "source_bytes": "Int64", "source_sha256": "string", "source_container": "string",
    "source_codec": "string", "source_width": "Int64", "source_height": "Int64",
    "source_fps": "Float64", "source_frames": "Int64", "source_duration_s": "Float64",
    "source_rotation": "Int64", "source_has_audio": "boolean",
    "source_variable_frame_rate": "boolean", "source_timestamp_repair": "string",
    "video_key": "string", "width": "Int64", "height": "Int64", "fps": "Float64",
    "frames": "Int64", "duration_s": "Float64",
    "annotations_key": "string", "masks_key": "string", "caption": "string",
    "labels": "string", "annotation_error": "string",
}  # fmt: skip


def _ingest_one(
    storage: Storage, source: Storage, shard: str, key: str, video_id: str, options: IngestOptions
) -> dict[str, Any]:
    row: dict[str, Any] = {"video_id": video_id, "source_key": key, "source_uri": None}
    video_key = f"{shard_prefix(shard)}/{video_id}.mp4"
    json_key, masks_key = sidecar_keys(video_key)
    try:
        row["source_uri"] = source.uri(key)
        with source.local_path(key) as local:
            row["source_bytes"] = local.stat().st_size
            row["source_sha256"] = sha256_file(local)
            video = decode_normalised(local, options.spec, options.limits)
        row.update({f"source_{k}": v for k, v in _probe_columns(video.probe).items()})
        _check_normalised_length(video, options)
        with tempfile.TemporaryDirectory(prefix="viva-ingest-") as tmp:
            local_video = Path(tmp, "video.mp4")
            write_video(local_video, video.frames, video.fps, crf=options.crf)
            with _storage_write(storage, video_key):
                storage.put_file(local_video, video_key)
        t, h, w, _ = video.frames.shape
        row.update(
            status=OK,
            reason=None,
            video_key=video_key,
            width=w,
            height=h,
            fps=video.fps,
            frames=t,
            duration_s=t / video.fps,
            _first_frame=video.frames[0],
        )
        row.update(
            _copy_annotations(storage, source, key, video, options.spec, json_key, masks_key)
        )
    except VideoRejected as exc:
        row.update(status=REJECTED, reason=exc.reason)
    except StorageWriteError:
        raise  # the storage's fault, not the video's: fail the step (retried), reject nothing
    except FileNotFoundError:
        if source.exists(key):  # listed like a file, read as none
            reason = "not a regular file (a FIFO, device or socket)"
        else:
            reason = "source file is missing (deleted after registration?)"
        row.update(status=REJECTED, reason=reason)
    except PathEscapeError as exc:  # a symlink out of the source: never read, a plain refusal
        row.update(status=REJECTED, reason=f"refused: {exc}")
    except Exception as exc:  # one bad file must never stop the shard; the reason is kept
        if is_storage_outage(exc):
            raise  # reading the source failed, not the video: fail the step (retried)
        log.exception("unexpected failure ingesting %s", key)
        row.update(status=REJECTED, reason=f"unexpected error: {one_line_reason(exc)}")
    if row["status"] == REJECTED:
        for stale in (video_key, json_key, masks_key):
            storage.delete(stale)
    return row


def _check_normalised_length(video: NormalisedVideo, options: IngestOptions) -> None:
    """The normalised copy is what every later step reads, so ``min_frames`` holds for it too:
    a source shorter than ``min_frames`` ticks of the ingest frame rate (a very short clip, or
    a few frames spread over a long time) would otherwise pass as a one-frame video."""
    frames, needed = len(video.frames), options.limits.min_frames
    if frames < needed:
        raise VideoRejected(
            f"too short once normalised: {frames} frame{'s' * (frames != 1)} at"
            f" {options.spec.fps:g} fps from a"
            f" {video.probe.duration_s:.3f} s source (at least {needed} frames needed;"
            " ingest.fps sets the rate)"
        )


class StorageWriteError(RuntimeError):
    """Writing a shard's output failed (e.g. S3 unreachable). Unlike a bad input file this
    fails the whole step, so its retry redoes the shard instead of recording the video as
    rejected."""


@contextmanager
def _storage_write(storage: Storage, key: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise StorageWriteError(f"writing {storage.uri(key)} failed: {exc}") from exc


def _probe_columns(probe: Any) -> dict[str, Any]:
    values = probe.to_dict()
    return {
        "container": values.get("container"),
        "codec": values.get("codec"),
        "width": values.get("width"),
        "height": values.get("height"),
        "fps": values.get("fps"),
        "frames": values.get("frame_count"),
        "duration_s": values.get("duration_s"),
        "rotation": values.get("rotation"),
        "has_audio": values.get("has_audio"),
        "variable_frame_rate": values.get("variable_frame_rate"),
        "timestamp_repair": values.get("timestamp_repair"),
    }


def load_source_annotations(source: Storage, key: str) -> Annotations | None:
    """The annotations that came with a source video: ``.json`` + ``.masks.npz`` sidecars, or
    a DAVIS-style ``.masks/`` folder of index PNGs; ``None`` when there are none."""
    json_key, npz_key = sidecar_keys(key)
    if source.exists(npz_key):
        json_bytes = source.read_bytes(json_key) if source.exists(json_key) else b"{}"
        return Annotations.from_bytes(json_bytes, source.read_bytes(npz_key))
    pngs = [k for k in source.list(png_dir_key(key)) if k.lower().endswith(".png")]
    if not pngs:
        return None
    json_bytes = source.read_bytes(json_key) if source.exists(json_key) else None
    return annotations_from_pngs([source.read_bytes(k) for k in pngs], json_bytes)


def _copy_annotations(
    storage: Storage,
    source: Storage,
    key: str,
    video: Any,
    spec: NormaliseSpec,
    json_key: str,
    masks_key: str,
) -> dict[str, Any]:
    """Bring the video's sidecars along, re-timed and re-sized like its frames.

    A broken sidecar does not reject the video (the frames are fine); the problem is recorded
    in ``annotation_error`` and later steps fall back to tracking.
    """
    try:
        ann = load_source_annotations(source, key)
        if ann is None:
            with _storage_write(storage, json_key):
                for stale in (json_key, masks_key):
                    storage.delete(stale)
            return {"annotations_key": None, "masks_key": None}
        masks = normalise_masks(ann.masks, video.source_indices, spec, video.probe)
        normalised = Annotations(ann.caption, ann.objects, masks, ann.extra)
    except (AnnotationError, ValueError) as exc:
        return {"annotations_key": None, "masks_key": None, "annotation_error": str(exc)}
    json_bytes, npz_bytes = normalised.to_bytes()
    with _storage_write(storage, json_key):
        storage.write_bytes(json_key, json_bytes)
        storage.write_bytes(masks_key, npz_bytes)
    labels = [str(obj.get("label", "")) for obj in ann.objects]
    return {
        "annotations_key": json_key,
        "masks_key": masks_key,
        "caption": ann.caption,
        "labels": json.dumps(labels),
        "annotation_error": None,
    }


def shard_is_current(storage: Storage, shard: str, members: pd.DataFrame) -> bool:
    """True when the shard's manifest already covers exactly its registered videos."""
    if not storage.exists(manifest_key(shard)):
        return False
    done = storage.read_parquet(manifest_key(shard))
    return set(done["video_id"]) == set(members["video_id"])
