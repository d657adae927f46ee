"""Benchmark suites in the VIE-Bench style: a JSONL manifest of editing instances.

One JSON object per line::

    {"id": "swap-001", "category": "swap", "source_video": "videos/001.mp4",
     "instruction": "Replace the dog with a cat", "source_caption": "...",
     "target_caption": "...", "reference_image": null}

Paths are keys relative to the storage root (local folder or ``s3://`` prefix), so the same
manifest works on a laptop and on S3. Loading validates everything up front and names the
manifest line at fault, because a benchmark that silently drops or misreads an instance gives
scores that cannot be compared between runs. Media are never decoded here: that is the
evaluator's job, and it keeps loading cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import pandas as pd

from viva_pipelines.ingest.raw_videos import ASSET as RAW_VIDEOS
from viva_pipelines.storage import PathEscapeError, Storage, normalise_key

CATEGORIES = ("swap", "color", "add", "remove", "style", "tone", "hybrid", "ref_swap", "ref_add")
REQUIRED = ("id", "category", "source_video", "instruction", "source_caption", "target_caption")
OPTIONAL = ("reference_image", "target_video", "edit_mask")
# Fields that name files under the root: checked for escapes and (optionally) existence.
#: Manifest key of a suite in its media root (where the demo suite is written, and where the
#: benchmark looks when ``benchmark.manifest`` is not set).
MANIFEST = "manifest.jsonl"
PATH_FIELDS = ("source_video", "reference_image", "target_video", "edit_mask")
# Reference-guided categories are meaningless without the reference image.
NEEDS_REFERENCE = ("ref_swap", "ref_add")


class SuiteError(ValueError):
    """A manifest that cannot be used as a benchmark; the message names the file and line."""


@dataclass(frozen=True)
class BenchInstance:
    """One editing task: a source video, an instruction and the captions around it."""

    id: str
    category: str
    source_video: str
    instruction: str
    source_caption: str
    target_caption: str
    reference_image: str | None = None
    target_video: str | None = None
    edit_mask: str | None = None

    def paths(self) -> list[str]:
        """Keys of the files this instance references (source first, absent ones skipped)."""
        return [value for name in PATH_FIELDS if (value := getattr(self, name)) is not None]


COLUMNS = tuple(field.name for field in fields(BenchInstance))


def _parse_line(where: str, text: str) -> BenchInstance:
    """Validate one manifest line; every problem raises a SuiteError prefixed by ``where``."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise SuiteError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise SuiteError(f"{where}: invalid JSON (nested too deeply)") from None
    if not isinstance(row, dict):
        raise SuiteError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    missing = [name for name in REQUIRED if name not in row]
    if missing:
        raise SuiteError(f"{where}: missing required field(s) {', '.join(map(repr, missing))}")
    values: dict[str, str | None] = {}
    for name in COLUMNS:
        value = row.get(name)
        if value is None and name in OPTIONAL:
            values[name] = None
            continue
        if not isinstance(value, str):
            raise SuiteError(f"{where}: field {name!r} must be a string, got {value!r}")
        if not value.strip():
            raise SuiteError(f"{where}: field {name!r} is empty")
        values[name] = value
    if values["category"] not in CATEGORIES:
        raise SuiteError(
            f"{where}: unknown category {values['category']!r} (known: {', '.join(CATEGORIES)})"
        )
    if values["category"] in NEEDS_REFERENCE and values["reference_image"] is None:
        raise SuiteError(f"{where}: category {values['category']!r} needs a reference_image")
    for name in PATH_FIELDS:
        if values[name] is None:
            continue
        try:
            values[name] = normalise_key(values[name])
        except PathEscapeError as err:
            raise SuiteError(f"{where}: field {name!r}: {err}") from None
    return BenchInstance(**values)


def load_suite(
    storage: Storage,
    manifest_key: str,
    *,
    check_files: bool = True,
    manifest_storage: Storage | None = None,
) -> list[BenchInstance]:
    """Read and validate the JSONL manifest at ``manifest_key`` (in ``manifest_storage``,
    default ``storage``, which holds the files its paths name).

    Blank lines are skipped but still counted, so line numbers match an editor's. With
    ``check_files`` every referenced file must exist under the root; turn it off to validate
    a manifest before its media are uploaded.
    """
    source = manifest_storage or storage
    if not source.exists(manifest_key):
        raise SuiteError(f"{manifest_key}: manifest not found under {source.root_uri}")
    try:
        # utf-8-sig: the byte-order mark some Windows editors write first is not text
        text = source.read_bytes(manifest_key).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{manifest_key}: not UTF-8 text ({err.reason})") from None
    instances: list[BenchInstance] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest_key} line {number}"
        instance = _parse_line(where, line)
        if instance.id in first_line:
            raise SuiteError(
                f"{where}: duplicate id {instance.id!r} (first on line {first_line[instance.id]})"
            )
        first_line[instance.id] = number
        if check_files:
            for key in instance.paths():
                try:
                    found = storage.exists(key)
                except PathEscapeError as err:  # a symlink pointing outside a local root
                    raise SuiteError(f"{where}: {err}") from None
                if not found:
                    raise SuiteError(f"{where}: referenced file {key!r} does not exist")
        instances.append(instance)
    if not instances:
        raise SuiteError(f"{manifest_key}: empty manifest, no instances")
    return instances


def suite_frame(instances: Iterable[BenchInstance]) -> pd.DataFrame:
    """One row per instance with every field as a column, in manifest order (for Parquet and
    Dagster metadata); the columns exist even for an empty input so schemas stay stable."""
    rows = [asdict(instance) for instance in instances]
    # Object columns keep a missing optional as None (pandas 3 would infer a string dtype
    # with NaN), so a row reads back exactly as the instance it came from.
    return pd.DataFrame(
        {name: pd.Series([row[name] for row in rows], dtype=object) for name in COLUMNS}
    )


def suite_fingerprint(storage: Storage, instances: Iterable[BenchInstance]) -> str:
    """16 hex chars of sha256 over the instances and the bytes of every referenced file.

    Used as the suite asset's data version: it changes when any row or any media file
    changes, and not when lines are merely reordered (rows are hashed sorted by id, files
    sorted by key, each length-prefixed so concatenations cannot collide).
    """
    items = sorted(instances, key=lambda instance: instance.id)
    digest = hashlib.sha256(b"viva-bench-suite/v1\n")
    for instance in items:
        row = json.dumps(asdict(instance), sort_keys=True, ensure_ascii=True).encode()
        digest.update(b"row %d\n" % len(row) + row)
    for key in sorted({key for instance in items for key in instance.paths()}):
        data = storage.read_bytes(key)
        digest.update(b"file %d %d\n" % (len(key.encode()), len(data)) + key.encode() + data)
    return digest.hexdigest()[:16]


def training_video_hashes(storage: Storage, qc_manifest: pd.DataFrame) -> set[str]:
    """SHA-256 of the raw file behind every video in ``qc_dataset``'s training split (from the
    ``raw_videos`` shard manifests, which record it at ingest)."""
    train = qc_manifest[(qc_manifest["split"] == "train") & (qc_manifest["modality"] == "video")]
    train_ids = set(train["video_id"].dropna())
    hashes: set[str] = set()
    for key in storage.list(RAW_VIDEOS):
        if key.endswith("/manifest.parquet"):
            shard = storage.read_parquet(key)
            hashes |= set(shard.loc[shard["video_id"].isin(train_ids), "source_sha256"].dropna())
    return hashes


def leaked_instances(
    storage: Storage, instances: Iterable[BenchInstance], train_hashes: set[str]
) -> list[str]:
    """Ids of the instances whose source video is byte for byte a training video. A suite
    video that was re-encoded before training is not caught: that needs a perceptual hash."""
    leaked = []
    for instance in instances:
        digest = hashlib.sha256(storage.read_bytes(instance.source_video)).hexdigest()
        if digest in train_hashes:
            leaked.append(instance.id)
    return leaked
