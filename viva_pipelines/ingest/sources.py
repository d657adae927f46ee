"""List the video files of a source: a local folder or an S3 prefix.

Files that are not taken are counted by extension, so a folder of ``.mpg`` clips left out of
``sources.raw_videos.extensions`` shows up as "skipped: .mpg 12" instead of disappearing.
Annotation sidecars of listed videos (``clip.json``, ``clip.masks.npz``, ``clip.masks/*.png``)
travel with their video and are not counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from viva_pipelines.storage import Storage
from viva_pipelines.video.annotations import png_dir_key, sidecar_keys

LISTING_COLUMNS = ["key", "size", "version"]
#: How a skipped file without an extension, or a hidden one, is counted.
NO_EXTENSION, HIDDEN = "(no extension)", "(hidden)"


@dataclass(frozen=True)
class SourceListing:
    """``videos``: one row per video (``key`` relative to the root, ``size``, ``version``);
    ``skipped``: files passed over, counted by lower-case extension."""

    videos: pd.DataFrame
    skipped: dict[str, int]


def list_source(
    source: Storage, extensions: Iterable[str], *, s3_client: Any | None = None
) -> SourceListing:
    """List the source root. ``version`` is the mtime or ETag. With an S3 root and a boto3
    ``s3_client`` the listing uses the client's paginator (what the sensor does); otherwise the
    storage's own filesystem."""
    wanted = tuple(e.lower() for e in extensions)
    if source.is_remote and s3_client is not None:
        rows = _list_s3(s3_client, source.root_uri)
    else:
        rows = source.list(detail=True)
    videos, others = [], []
    for row in rows:
        name = row["key"].rsplit("/", 1)[-1]
        is_video = not name.startswith(".") and name.lower().endswith(wanted)
        (videos if is_video else others).append(row)
    sidecars = _sidecars([row["key"] for row in videos])
    skipped = Counter(
        _extension(row["key"]) for row in others if not _is_sidecar(row["key"], sidecars)
    )
    frame = pd.DataFrame(videos, columns=LISTING_COLUMNS).sort_values("key", ignore_index=True)
    return SourceListing(frame, dict(sorted(skipped.items())))


def _sidecars(video_keys: list[str]) -> tuple[set[str], tuple[str, ...]]:
    """Sidecar file names and DAVIS-style mask folders (as ``folder/`` prefixes) of the videos."""
    files = {name for key in video_keys for name in sidecar_keys(key)}
    folders = tuple(png_dir_key(key) + "/" for key in video_keys)
    return files, folders


def _is_sidecar(key: str, sidecars: tuple[set[str], tuple[str, ...]]) -> bool:
    files, folders = sidecars
    return key in files or key.startswith(folders)


def _extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    if name.startswith("."):
        return HIDDEN
    return "." + name.rsplit(".", 1)[1].lower() if "." in name else NO_EXTENSION


def skipped_text(skipped: dict[str, int]) -> str:
    """``"3 files: .mpg 2, .txt 1"``, or ``"none"``."""
    if not skipped:
        return "none"
    total = sum(skipped.values())
    counts = ", ".join(f"{ext} {n}" for ext, n in skipped.items())
    return f"{total} file{'s' * (total != 1)}: {counts}"


def _list_s3(client: Any, uri: str) -> list[dict[str, Any]]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    rows = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rows.append(
                {"key": obj["Key"][len(prefix) :], "size": int(obj["Size"]), "version": obj["ETag"]}
            )
    return rows
