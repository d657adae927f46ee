"""Image-editing pairs from an external manifest, for the image share of SFT.

The manifest is JSONL, one pair per line, with paths relative to the manifest's folder
(local or ``s3://``): ``{"id": ..., "source": "a/src.png", "target": "a/tgt.png",
"instruction": ..., "edit_type": ... (optional), "mask": ... (optional),
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

REQUIRED = ("id", "source", "target", "instruction")


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
    lines = source.read_bytes(name).decode().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            rows.append(_row(storage, source, number, line, val_fraction, split_seed))
    return rows


def _row(
    storage: Storage, source: Storage, number: int, line: str, val_fraction: float, seed: int
) -> dict[str, Any]:
    base = {"sample_id": f"external-line-{number}", "modality": "image", "status": REJECTED}
    try:
        doc = json.loads(line)
    except ValueError as exc:
        return {**base, "reason": f"line {number}: not valid JSON ({exc.msg})"}
    if not isinstance(doc, dict) or (missing := [k for k in REQUIRED if not doc.get(k)]):
        return {
            **base,
            "reason": f"line {number}: missing {', '.join(missing) if isinstance(doc, dict) else 'an object'}",
        }
    pair_id = re.sub(r"[^A-Za-z0-9_-]+", "_", str(doc["id"]))[:64]
    base = {**base, "sample_id": f"external-{pair_id}", "pair_id": f"external-{pair_id}",
            "video_id": f"external-{pair_id}", "instruction": doc["instruction"],
            "original_instruction": doc["instruction"],
            "edit_type": doc.get("edit_type", "external"),
            "source_caption": doc.get("source_caption"), "target_caption": doc.get("target_caption"),
            "split": split_of(f"external-{pair_id}", val_fraction, seed)}  # fmt: skip
    keys = {}
    for field in ("source", "target", "mask"):
        if not doc.get(field):
            continue
        try:
            data = source.read_bytes(doc[field])
        except PathEscapeError:
            return {
                **base,
                "reason": f"line {number}: {field} path {doc[field]!r} leaves the manifest's folder",
            }
        except (FileNotFoundError, OSError):
            return {**base, "reason": f"line {number}: {field} file {doc[field]!r} is missing"}
        suffix = doc[field].rsplit(".", 1)[-1].lower() if "." in doc[field] else "png"
        keys[field] = f"{ASSET}/external/{pair_id}/{field}.{suffix}"
        storage.write_bytes(keys[field], data)
    return {**base, "status": ACCEPTED, "reason": None, "source_key": keys["source"],
            "target_key": keys["target"], "mask_key": keys.get("mask")}  # fmt: skip
