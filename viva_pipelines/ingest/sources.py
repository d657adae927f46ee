"""List the video files of a source: a local folder or an S3 prefix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from viva_pipelines.storage import Storage

LISTING_COLUMNS = ["key", "size", "version"]


def _is_video(key: str, extensions: Iterable[str]) -> bool:
    name = key.rsplit("/", 1)[-1]
    return not name.startswith(".") and name.lower().endswith(tuple(e.lower() for e in extensions))


def list_source_videos(
    source: Storage, extensions: Iterable[str], *, s3_client: Any | None = None
) -> pd.DataFrame:
    """One row per video under the source root: ``key`` (relative to the root), ``size`` and
    ``version`` (mtime or ETag). With an S3 root and a boto3 ``s3_client`` the listing uses the
    client's paginator (what the sensor does); otherwise the storage's own filesystem."""
    extensions = list(extensions)
    if source.is_remote and s3_client is not None:
        rows = _list_s3(s3_client, source.root_uri)
    else:
        rows = source.list(detail=True)
    rows = [row for row in rows if _is_video(row["key"], extensions)]
    return pd.DataFrame(rows, columns=LISTING_COLUMNS).sort_values("key", ignore_index=True)


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
