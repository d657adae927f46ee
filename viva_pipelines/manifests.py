"""Manifests: one Parquet table per shard and asset, versioned by content hash."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from viva_pipelines.storage import is_storage_outage

if TYPE_CHECKING:
    from viva_pipelines.storage import Storage

log = logging.getLogger(__name__)

#: Status of a manifest row whose item raised: the rest of the shard went on without it.
FAILED = "failed"
#: Longest reason kept in a manifest row.
_REASON_CHARS = 300


@dataclass
class ManifestResult:
    """A manifest as written: its rows, where it lives and its content hash."""

    manifest: pd.DataFrame
    manifest_uri: str
    data_version: str


def typed_frame(rows: Iterable[Mapping[str, Any]], schema: Mapping[str, str]) -> pd.DataFrame:
    """Rows as a DataFrame with exactly ``schema``'s columns and nullable dtypes, so that it
    is identical after a Parquet round trip (and so is its content hash)."""
    return pd.DataFrame(list(rows), columns=list(schema)).astype(dict(schema))


def item_failure(exc: Exception, item: str) -> str:
    """The one-line ``reason`` of an item (a video, a pair, an edit) whose step raised ``exc``.

    Per-item handlers call this so that one bad item becomes a ``failed`` row and the shard
    goes on. A storage outage is not the item's fault: it is re-raised, so the step fails and
    Dagster retries it instead of recording good inputs as broken. The traceback goes to the
    log, never to the manifest.
    """
    if is_storage_outage(exc):
        raise exc
    log.warning("%s failed", item, exc_info=exc)
    return one_line_reason(exc)


def one_line_reason(exc: BaseException) -> str:
    """``"Type: message"`` on one line (whatever the exception printed), at most 300 chars."""
    message = " ".join(str(exc).split())
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 1] + "…"


def reason_counts(reasons: pd.Series) -> dict[str, int]:
    """How many rows gave each reason, with the numbers inside reasons masked (``#``) so that
    "lost: visible in 20% of frames" and "... 35% ..." count as one kind."""
    kinds = reasons.dropna().astype(str).map(lambda text: re.sub(r"\d+(\.\d+)?", "#", text))
    return {str(k): int(n) for k, n in kinds.value_counts().items()}


def content_hash(
    frame: pd.DataFrame, *, sort_by: str | list[str], exclude: Iterable[str] = ()
) -> str:
    """Hash of a manifest's rows (order-independent), for Dagster ``DataVersion``s."""
    kept = frame.drop(columns=[c for c in exclude if c in frame.columns])
    rows = kept.sort_values(sort_by, ignore_index=True)
    canonical = rows.to_json(orient="records", double_precision=12)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def write_manifest(
    storage: Storage,
    key: str,
    rows: Iterable[Mapping[str, Any]],
    schema: Mapping[str, str],
    *,
    sort_by: str | list[str],
    exclude: Iterable[str] = (),
) -> ManifestResult:
    """Type ``rows`` by ``schema``, write them to ``key`` as Parquet and hash their content."""
    manifest = typed_frame(rows, schema)
    uri = storage.write_parquet(key, manifest)
    return ManifestResult(manifest, uri, content_hash(manifest, sort_by=sort_by, exclude=exclude))


def markdown_table(frame: pd.DataFrame, *, index: bool = True) -> str:
    """A small DataFrame as a Markdown table, for Dagster metadata."""
    table = frame.reset_index() if index else frame
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
