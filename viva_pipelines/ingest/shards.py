"""Stable assignment of source videos to shards (the ``video_shards`` partitions).

Rules: a video keeps the shard it was first given, forever; new videos fill the newest shard
until it holds ``shard_size`` videos (it is then *sealed*) and then open the next one. The
registry that remembers this lives in storage (``video_shards/registry.parquet``), not in the
Dagster instance, so the CLI and the sensor share it and it survives a new Dagster deployment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from viva_pipelines.ingest.sources import list_source
from viva_pipelines.storage import Storage

REGISTRY_KEY = "video_shards/registry.parquet"
REGISTRY_COLUMNS = ["key", "size", "version", "shard", "video_id"]
#: What the latest listing passed over, by extension (see ``ingest.sources``).
SKIPPED_KEY = "video_shards/skipped.json"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def video_id_for(key: str) -> str:
    """A storage-safe id, readable and unique: ``clip_01-3fa2c9d1`` for ``cam a/clip 01.mp4``."""
    stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:48] or "video"
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def load_registry(storage: Storage) -> pd.DataFrame:
    if not storage.exists(REGISTRY_KEY):
        return pd.DataFrame(columns=REGISTRY_COLUMNS)
    return storage.read_parquet(REGISTRY_KEY)


def assign_new_videos(
    registry: pd.DataFrame, listing: pd.DataFrame, shard_size: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every listed video not yet in ``registry`` a shard.

    Returns ``(updated_registry, new_rows)``. Existing rows are never changed; new videos are
    taken in key order so that the same listing always gives the same assignment.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    known = set(registry["key"])  # a set lookup: Series.isin on Arrow strings is ~10x slower
    # A Series, not a list: an empty list would select no columns instead of no rows.
    is_new = pd.Series([key not in known for key in listing["key"]], listing.index, dtype=bool)
    new = listing[is_new].sort_values("key", ignore_index=True)
    if new.empty:
        return registry, new.assign(shard=pd.Series(dtype=str), video_id=pd.Series(dtype=str))
    counts = registry.groupby("shard").size()
    last = max(counts.index) if len(counts) else None
    index = int(last.removeprefix("shard-")) if last else 0
    room = shard_size - int(counts[last]) if last else shard_size
    shards = []
    for _ in range(len(new)):
        if room == 0:
            index, room = index + 1, shard_size
        shards.append(shard_name(index))
        room -= 1
    new = new.assign(shard=shards, video_id=[video_id_for(k) for k in new["key"]])
    updated = pd.concat([registry, new[REGISTRY_COLUMNS]], ignore_index=True)
    return updated, new[REGISTRY_COLUMNS]


def scan_and_register(
    storage: Storage,
    source: Storage,
    extensions: Iterable[str],
    shard_size: int,
    *,
    s3_client: Any | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """List the source, give new videos a shard and save the registry (atomically) if it
    changed, and the count of skipped files (:func:`load_skipped`) likewise. Returns
    ``(registry, new_rows)``; shared by the sensor and the CLI."""
    listing = list_source(source, extensions, s3_client=s3_client)
    registry, new = assign_new_videos(load_registry(storage), listing.videos, shard_size)
    if not new.empty:
        storage.write_parquet(REGISTRY_KEY, registry)
    if listing.skipped != load_skipped(storage):
        storage.write_bytes(SKIPPED_KEY, json.dumps(listing.skipped).encode())
    return registry, new


def load_skipped(storage: Storage) -> dict[str, int]:
    """Files the latest source listing passed over, by extension (``{}`` before any)."""
    if not storage.exists(SKIPPED_KEY):
        return {}
    return json.loads(storage.read_bytes(SKIPPED_KEY))


def shard_members(registry: pd.DataFrame, shard: str) -> pd.DataFrame:
    """The videos of one shard, in registration order."""
    return registry[registry["shard"] == shard].reset_index(drop=True)


@dataclass(frozen=True)
class ShardRun:
    shard: str
    size: int

    @property
    def run_key(self) -> str:
        """Unique per shard content: a shard that grows gets a new run, an unchanged one never."""
        return f"{self.shard}@{self.size}"


def plan_shard_runs(
    registry: pd.DataFrame, requested: Mapping[str, int], max_runs: int
) -> tuple[list[ShardRun], dict[str, int]]:
    """Shards whose membership grew since the cursor ``requested`` (shard → size last requested).

    At most ``max_runs`` are returned, oldest shard first; the rest wait for the next tick, so
    a sensor re-enabled after a long pause never floods the run queue. Returns the runs and the
    cursor to store once they are requested.
    """
    sizes = registry.groupby("shard").size().sort_index()
    pending = [ShardRun(shard, int(n)) for shard, n in sizes.items() if requested.get(shard) != n]
    runs = pending[:max_runs]
    cursor = dict(requested)
    cursor.update({run.shard: run.size for run in runs})
    return runs, cursor
