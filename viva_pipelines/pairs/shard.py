"""``synthetic_pairs`` for one shard: edit pairs from every video's tracked objects.

Per pair, under ``synthetic_pairs/{shard}/{pair_id}/``: ``target.mp4``, ``source.mp4`` (only
when the source is not the ingested video itself, e.g. for ``add``), ``mask.npz`` (edit
region, ``bool [T, H, W]``), ``reference.png`` for ``ref_*`` edits, and a key frame
(``key_source.png``, ``key_target.png``, ``key_mask.png``) used as an image-editing pair.
``manifest.parquet`` has one row per pair with its rule metrics (:mod:`viva_pipelines.qc.rules`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from viva_pipelines.config.schema import PairsSettings
from viva_pipelines.manifests import FAILED, ManifestResult, item_failure, write_manifest
from viva_pipelines.masks.shard import (
    KEPT,
    load_frames,
    load_mask,
    save_mask,
    videos_without_masks,
)
from viva_pipelines.masks.types import TrackedObject
from viva_pipelines.pairs.generators import Templates, generate_pairs, load_templates
from viva_pipelines.pairs.types import LOCAL_EDITS, EditBackend, EditPair
from viva_pipelines.previews import grid, to_png
from viva_pipelines.qc.rules import pair_metrics
from viva_pipelines.storage import Storage
from viva_pipelines.video.images import decode_image
from viva_pipelines.video.io import write_video

ASSET = "synthetic_pairs"
CODE_VERSION = "synthetic_pairs-2"
#: Status of the one row of a video that yields no pair (besides "ok" and manifests.FAILED).
NO_PAIRS = "no_pairs"
#: Why a video with kept tracks still has no local edit: none is large enough to edit.
NO_USABLE_OBJECT = "no object covers the minimum area"

MANIFEST_SCHEMA = {
    "pair_id": "string", "video_id": "string", "shard": "string", "edit_type": "string",
    "status": "string", "reason": "string", "instruction": "string",
    "source_caption": "string", "target_caption": "string", "source_key": "string",
    "target_key": "string", "mask_key": "string", "reference_key": "string",
    "key_source": "string", "key_target": "string", "key_mask": "string", "key_frame": "Int64",
    "fps": "Float64", "backend": "string", "params": "string",
    "frames_source": "Int64", "frames_target": "Int64", "mask_fraction": "Float64",
    "mask_stability": "Float64", "inside_change": "Float64", "outside_change": "Float64",
    "total_change": "Float64",
}  # fmt: skip


def manifest_key(shard: str) -> str:
    return f"{ASSET}/{shard}/manifest.parquet"


def preview_key(shard: str) -> str:
    return f"{ASSET}/{shard}/preview.png"


def write_preview(storage: Storage, shard: str, manifest: pd.DataFrame) -> bytes | None:
    """One pair of each edit type as key frames: source | target | edit mask."""
    ok = manifest[manifest["status"] == "ok"]
    if ok.empty:
        return None
    rows = []
    for _, pairs_of_type in ok.groupby("edit_type", sort=True):
        pair = pairs_of_type.iloc[0]
        rows.append(
            [
                decode_image(storage.read_bytes(pair[key]))
                for key in ("key_source", "key_target", "key_mask")
            ]
        )
    png = to_png(grid(rows))
    storage.write_bytes(preview_key(shard), png)
    return png


def _video_seed(seed: int, video_id: str) -> int:
    """Per-video seed: stable whatever else the shard holds."""
    return int(hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()[:8], 16)


def pair_shard(
    storage: Storage,
    shard: str,
    raw_manifest: pd.DataFrame,
    tracks: pd.DataFrame,
    backend: EditBackend,
    settings: PairsSettings,
    crf: int,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> ManifestResult:
    """Generate, store and measure the pairs of every ``ok`` video of the shard.

    Each video ends with its pairs, or ``failed`` rows (one per edit type or pair that raised,
    with the reason), or one ``no_pairs`` row saying why it has none; the shard always
    completes unless the storage itself is unreachable.
    """
    videos = raw_manifest[raw_manifest["status"] == "ok"]
    kept = tracks[tracks["status"] == KEPT]
    no_masks = videos_without_masks(tracks)
    templates = load_templates(settings.vocabulary)  # once per shard: a bad file fails first
    rows: list[dict[str, Any]] = []
    for done, video in enumerate(tqdm(videos.itertuples(), total=len(videos), desc=shard), 1):
        base = {"video_id": video.video_id, "shard": shard, "backend": backend.name}
        try:
            frames = load_frames(storage, video.video_key)
            objects = [
                TrackedObject(
                    int(t.object_id), str(t.label), load_mask(storage, t.mask_key), float(t.score)
                )
                for t in kept[kept["video_id"] == video.video_id].itertuples()
            ]
        except Exception as exc:
            reason = item_failure(exc, f"loading {video.video_id}")
            rows.append(
                {**base, "pair_id": f"{video.video_id}-failed", "status": FAILED, "reason": reason}
            )
            continue
        video_rows = []
        for edit_type in dict.fromkeys(settings.edit_types):
            video_rows += _pairs_of_type(
                storage, shard, video, frames, objects, edit_type, backend, settings, crf, templates
            )
        if not video_rows:
            why = no_masks.get(video.video_id, NO_USABLE_OBJECT)
            video_rows.append(
                {
                    **base,
                    "pair_id": f"{video.video_id}-none",
                    "status": NO_PAIRS,
                    "reason": f"only local edit types configured; {why}",
                }
            )
        rows += video_rows
        if on_progress:
            on_progress(done, len(videos), video.video_id)
    return write_manifest(storage, manifest_key(shard), rows, MANIFEST_SCHEMA, sort_by="pair_id")


def _pairs_of_type(
    storage: Storage,
    shard: str,
    video: Any,
    frames: np.ndarray,
    objects: list[TrackedObject],
    edit_type: str,
    backend: EditBackend,
    settings: PairsSettings,
    crf: int,
    templates: Templates,
) -> list[dict[str, Any]]:
    """The manifest rows of one video's pairs of one edit type: stored pairs, or ``failed``
    rows for the generation or a pair that raised. Each type draws from its own random
    stream, so generating the types one by one gives the same pairs as all at once."""
    base = {
        "video_id": video.video_id,
        "shard": shard,
        "backend": backend.name,
        "edit_type": edit_type,
        "status": FAILED,
    }
    caption = "" if pd.isna(video.caption) else str(video.caption)
    try:
        pairs = generate_pairs(
            frames,
            objects,
            caption,
            [edit_type],
            backend,
            seed=_video_seed(settings.seed, video.video_id),
            per_type=settings.per_type,
            dilation=settings.dilation,
            templates=templates,
        )
    except Exception as exc:
        reason = item_failure(exc, f"{edit_type} pairs of {video.video_id}")
        return [{**base, "pair_id": f"{video.video_id}-{edit_type}-failed", "reason": reason}]
    rows = []
    for index, pair in enumerate(pairs):
        pair_id = f"{video.video_id}-{edit_type}-{index}"
        try:
            stored = _store_pair(storage, shard, pair_id, video, frames, pair, backend.name, crf)
            rows.append(
                {
                    **stored,
                    **pair_metrics(pair.source, pair.target, pair.mask, dilation=settings.dilation),
                }
            )
        except Exception as exc:
            reason = item_failure(exc, f"pair {pair_id}")
            storage.delete(f"{ASSET}/{shard}/{pair_id}")  # what it wrote before failing
            rows.append({**base, "pair_id": pair_id, "reason": reason})
    return rows


def local_edit_gaps(
    raw_manifest: pd.DataFrame, tracks: pd.DataFrame, pairs: pd.DataFrame
) -> pd.Series:
    """Why each ``ok`` video of the shard got no local edit pair (video_id → reason), e.g.
    real footage without annotations under the ``annotations`` mask backend: it still gets
    global pairs (style, tone), and this says why it got nothing else."""
    videos = raw_manifest.loc[raw_manifest["status"] == "ok", "video_id"]
    ok = pairs[(pairs["status"] == "ok") & pairs["edit_type"].isin([*LOCAL_EDITS, "hybrid"])]
    with_local = set(ok["video_id"])
    no_masks = videos_without_masks(tracks)
    gaps = {v: no_masks.get(v, NO_USABLE_OBJECT) for v in videos if v not in with_local}
    return pd.Series(gaps, dtype="string", name="reason")


def _store_pair(
    storage: Storage,
    shard: str,
    pair_id: str,
    video: Any,
    frames: np.ndarray,
    pair: EditPair,
    backend: str,
    crf: int,
) -> dict[str, Any]:
    prefix = f"{ASSET}/{shard}/{pair_id}"
    fps = float(video.fps)
    if np.array_equal(pair.source, frames):
        source_key = video.video_key  # the ingested video itself: no copy
    else:
        source_key = f"{prefix}/source.mp4"
        with storage.staged(source_key) as path:
            write_video(path, pair.source, fps, crf=crf)
    target_key = f"{prefix}/target.mp4"
    with storage.staged(target_key) as path:
        write_video(path, pair.target, fps, crf=crf)
    save_mask(storage, f"{prefix}/mask.npz", pair.mask)
    reference_key = None
    if pair.reference is not None:
        reference_key = f"{prefix}/reference.png"
        storage.write_bytes(reference_key, to_png(pair.reference))
    key = len(pair.source) // 2
    keys = {
        "key_source": (f"{prefix}/key_source.png", pair.source[key]),
        "key_target": (f"{prefix}/key_target.png", pair.target[key]),
        "key_mask": (f"{prefix}/key_mask.png", pair.mask[key].astype(np.uint8) * 255),
    }
    for name, image in keys.values():
        storage.write_bytes(name, to_png(image))
    return {
        "pair_id": pair_id,
        "video_id": video.video_id,
        "shard": shard,
        "edit_type": pair.edit_type,
        "status": "ok",
        "reason": None,
        "instruction": pair.instruction,
        "source_caption": pair.source_caption,
        "target_caption": pair.target_caption,
        "source_key": source_key,
        "target_key": target_key,
        "mask_key": f"{prefix}/mask.npz",
        "reference_key": reference_key,
        **{k: v[0] for k, v in keys.items()},
        "key_frame": key,
        "fps": fps,
        "backend": backend,
        "params": json.dumps(pair.params, sort_keys=True, default=str),
    }
