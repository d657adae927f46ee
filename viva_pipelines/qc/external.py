"""Image-editing pairs from an external manifest, for the image share of SFT.

The manifest is JSONL, one pair per line, with paths relative to the manifest's folder
(local or ``s3://``): ``{"id": ..., "source": "a/src.png", "target": "a/tgt.png",
"instruction": ..., "edit_type": ... (optional), "mask": ... (optional), "reference": ...
(optional: the image of the new object of a ``ref_add`` / ``ref_swap``),
"source_caption": ..., "target_caption": ... (optional)}``. Valid pairs are copied into
storage (``qc_dataset/external/{id}/…``) so they are versioned and addressed like every other
sample; a bad line is one rejected row with its reason, never a failed run.
"""

from __future__ import annotations

import json
import re
from typing import Any

from viva_pipelines.qc.dataset import ACCEPTED, ASSET, REJECTED, split_of
from viva_pipelines.storage import PathEscapeError, Storage, file_location
from viva_pipelines.video.images import ImageUnreadable, decode_image

REQUIRED = ("id", "source", "target", "instruction")
#: Optional text fields; when present (and not null) they must be strings.
OPTIONAL_TEXT = ("edit_type", "source_caption", "target_caption")
IMAGE_FIELDS = ("source", "target", "mask", "reference")


class ExternalManifestError(ValueError):
    """The external manifest itself cannot be read (a bad line is a rejected row instead)."""


def external_image_rows(
    storage: Storage,
    manifest_uri: str,
    *,
    val_fraction: float,
    split_seed: int,
    endpoint_url: str | None = None,
) -> list[dict[str, Any]]:
    """``qc_dataset`` rows (modality ``image``) for every line of the manifest."""
    source, name = file_location(manifest_uri, endpoint_url=endpoint_url)
    try:
        data = source.read_bytes(name)
    except (FileNotFoundError, IsADirectoryError, PathEscapeError) as exc:
        raise ExternalManifestError(f"{manifest_uri}: external manifest not found ({exc})") from exc
    try:
        # utf-8-sig: the byte-order mark some Windows editors write first is not text
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise ExternalManifestError(
            f"{manifest_uri}: not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    rows = []
    first_line: dict[str, int] = {}  # pair id -> the line that claimed it
    for number, line in enumerate(lines, 1):
        if line.strip():
            rows.append(_row(storage, source, number, line, val_fraction, split_seed, first_line))
    return rows


def _problem(doc: Any) -> str | None:
    """Why a parsed line is not a usable pair (``None`` when its fields are well-typed)."""
    if not isinstance(doc, dict):
        return f"expected a JSON object, got {type(doc).__name__}"
    missing = [k for k in REQUIRED if doc.get(k) in (None, "")]
    if missing:
        return f"missing {', '.join(missing)}"
    if isinstance(doc["id"], bool) or not isinstance(doc["id"], str | int):
        return f"id must be a string, got {doc['id']!r}"
    for field in ("instruction", *IMAGE_FIELDS, *OPTIONAL_TEXT):
        value = doc.get(field)
        if value is not None and not isinstance(value, str):
            return f"{field} must be a string, got {type(value).__name__}"
    if not doc["instruction"].strip():
        return "instruction is blank"
    return None


def _row(
    storage: Storage,
    source: Storage,
    number: int,
    line: str,
    val_fraction: float,
    seed: int,
    first_line: dict[str, int],
) -> dict[str, Any]:
    base = {"sample_id": f"external-line-{number}", "modality": "image", "status": REJECTED}
    try:
        doc = json.loads(line)
    except ValueError as exc:
        return {**base, "reason": f"line {number}: not valid JSON ({getattr(exc, 'msg', exc)})"}
    except RecursionError:
        return {**base, "reason": f"line {number}: not valid JSON (nested too deeply)"}
    problem = _problem(doc)
    if problem:
        return {**base, "reason": f"line {number}: {problem}"}
    pair_id = re.sub(r"[^A-Za-z0-9_-]+", "_", str(doc["id"]))[:64]
    if pair_id in first_line:
        # Same (sanitised) id: the files would overwrite the first pair's in storage.
        return {
            **base,
            "reason": f"line {number}: duplicate id {doc['id']!r} (first on line "
            f"{first_line[pair_id]})",
        }
    first_line[pair_id] = number
    base = {
        **base,
        "sample_id": f"external-{pair_id}",
        "pair_id": f"external-{pair_id}",
        "video_id": f"external-{pair_id}",
        "instruction": doc["instruction"],
        "original_instruction": doc["instruction"],
        "edit_type": doc.get("edit_type") or "external",
        "source_caption": doc.get("source_caption"),
        "target_caption": doc.get("target_caption"),
        "split": split_of(f"external-{pair_id}", val_fraction, seed),
    }
    files, sizes = {}, {}
    for field in IMAGE_FIELDS:
        if not doc.get(field):
            continue
        try:
            files[field] = source.read_bytes(doc[field])
        except PathEscapeError:
            return {
                **base,
                "reason": f"line {number}: {field} path {doc[field]!r} leaves the manifest's folder",
            }
        except (FileNotFoundError, OSError, ValueError):
            return {**base, "reason": f"line {number}: {field} file {doc[field]!r} is missing"}
        # Decoded here, not first in training: an undecodable picture would stop SFT's cache.
        try:
            height, width = decode_image(files[field]).shape[:2]
        except ImageUnreadable as exc:
            return {
                **base,
                "reason": f"line {number}: {field} file {doc[field]!r} is not a readable image "
                f"({exc})",
            }
        sizes[field] = f"{width}x{height}"
    for field in ("target", "mask"):  # the reference is a picture of its own, any size
        if field in sizes and sizes[field] != sizes["source"]:
            return {
                **base,
                "reason": f"line {number}: {field} is {sizes[field]}, the source "
                f"{sizes['source']}: a pair's pictures must be the same size",
            }
    keys = {}
    for field, data in files.items():
        suffix = doc[field].rsplit(".", 1)[-1].lower() if "." in doc[field] else ""
        suffix = suffix if re.fullmatch(r"[a-z0-9]{1,8}", suffix) else "png"
        keys[field] = f"{ASSET}/external/{pair_id}/{field}.{suffix}"
        storage.write_bytes(keys[field], data)
    return {
        **base,
        "status": ACCEPTED,
        "reason": None,
        "source_key": keys["source"],
        "target_key": keys["target"],
        "mask_key": keys.get("mask"),
        "reference_key": keys.get("reference"),
    }
