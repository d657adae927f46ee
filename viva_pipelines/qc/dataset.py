"""``qc_dataset``: every shard's pairs filtered by rules (and optionally a VLM), split by
source video, with image-editing pairs cut from accepted video pairs.

Reads shard manifests only; videos are never loaded here, except the few sampled frames a VLM
review looks at.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
from tqdm import tqdm

from viva_pipelines.config.schema import QcSettings
from viva_pipelines.manifests import FAILED, ManifestResult, item_failure, write_manifest
from viva_pipelines.pairs.shard import NO_PAIRS
from viva_pipelines.qc.rules import qc_rejection
from viva_pipelines.storage import Storage
from viva_pipelines.vlm.review import PairVerdict

log = logging.getLogger(__name__)

ASSET = "qc_dataset"
CODE_VERSION = "qc_dataset-1"
MANIFEST_KEY = f"{ASSET}/manifest.parquet"
ACCEPTED, REJECTED = "accepted", "rejected"  # and manifests.FAILED
TRAIN, VAL = "train", "val"

MANIFEST_SCHEMA = {
    "sample_id": "string", "pair_id": "string", "modality": "string", "split": "string",
    "status": "string", "reason": "string", "edit_type": "string", "video_id": "string",
    "shard": "string", "instruction": "string", "original_instruction": "string",
    "source_caption": "string", "target_caption": "string", "source_key": "string",
    "target_key": "string", "mask_key": "string", "reference_key": "string",
    "fps": "Float64", "mask_fraction": "Float64", "outside_change": "Float64",
    "inside_change": "Float64", "total_change": "Float64", "vlm_score": "Float64",
}  # fmt: skip


#: Reviews a manifest row; raises to mark the pair as failed review (the run goes on).
Reviewer = Callable[[Any], PairVerdict]


def fingerprint(settings: QcSettings) -> str:
    """What of the QC settings goes into the dataset's data version: all of them."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def split_of(video_id: str, val_fraction: float, seed: int) -> str:
    """Deterministic split by source video, so no video lands on both sides."""
    digest = hashlib.sha256(f"{seed}:{video_id}".encode()).digest()
    return VAL if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else TRAIN


class QcResult(ManifestResult):
    """The dataset manifest; its data version covers the rows and the QC settings."""

    @property
    def accepted(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == ACCEPTED]

    def summary(self) -> pd.DataFrame:
        """Accepted samples per edit type, by modality and split."""
        accepted = self.accepted
        if accepted.empty:
            return pd.DataFrame()
        return (
            accepted.assign(column=accepted["modality"] + "/" + accepted["split"])
            .pivot_table(index="edit_type", columns="column", values="sample_id", aggfunc="count")
            .fillna(0)
            .astype(int)
        )

    def rejection_reasons(self) -> pd.Series:
        """How many pairs each rule rejected (the rule's name, without its numbers)."""
        rejected = self.manifest[self.manifest["status"] == REJECTED]
        return rejected["reason"].str.replace(r"\s*\(.*\)$", "", regex=True).value_counts()


def build_qc_dataset(
    storage: Storage,
    pair_manifests: Iterable[pd.DataFrame],
    settings: QcSettings,
    reviewer: Reviewer | None = None,
    extra_rows: Iterable[dict[str, Any]] = (),
) -> QcResult:
    """Filter, review, split; write ``qc_dataset/manifest.parquet`` (video and image rows).
    ``extra_rows`` are samples from elsewhere (e.g. an external image-pair manifest)."""
    pairs = pd.concat(list(pair_manifests), ignore_index=True)
    pairs = pairs[pairs["status"] != NO_PAIRS]  # a video's note that it has none, not a pair
    rows: list[dict[str, Any]] = []
    for pair in tqdm(pairs.itertuples(), total=len(pairs), desc="qc"):
        try:
            row = _video_row(pair, settings)
            reason = _rejection(pair, settings, reviewer, row)
        except Exception as exc:  # one pair that cannot be checked must not stop the dataset
            reason = item_failure(exc, f"QC of {pair.pair_id}")
            rows.append(_failed_row(pair, settings, reason))
            continue
        row.update(status=REJECTED if reason else ACCEPTED, reason=reason)
        rows.append(row)
        if not reason:
            rows.append(_image_row(pair, row))
    rows.extend(extra_rows)
    written = write_manifest(storage, MANIFEST_KEY, rows, MANIFEST_SCHEMA, sort_by="sample_id")
    rows_and_config = f"{written.data_version}:{fingerprint(settings)}"
    version = hashlib.sha256(rows_and_config.encode()).hexdigest()[:16]
    return QcResult(written.manifest, written.manifest_uri, version)


def _video_row(pair: Any, settings: QcSettings) -> dict[str, Any]:
    names = [c for c in MANIFEST_SCHEMA if hasattr(pair, c)]
    row = {name: getattr(pair, name) for name in names}
    row.update(
        sample_id=pair.pair_id,
        modality="video",
        split=split_of(pair.video_id, settings.val_fraction, settings.split_seed),
        original_instruction=pair.instruction,
    )
    return row


def _failed_row(pair: Any, settings: QcSettings, reason: str) -> dict[str, Any]:
    """The row of a pair whose checks raised: who it is and why, nothing taken from it."""
    return {
        "sample_id": str(pair.pair_id),
        "pair_id": str(pair.pair_id),
        "modality": "video",
        "split": split_of(str(pair.video_id), settings.val_fraction, settings.split_seed),
        "status": FAILED,
        "reason": reason,
        "edit_type": getattr(pair, "edit_type", None),
        "video_id": str(pair.video_id),
        "shard": getattr(pair, "shard", None),
    }


def _image_row(pair: Any, video_row: dict[str, Any]) -> dict[str, Any]:
    """The pair's key frame as a single-frame image-editing pair (same split as its video)."""
    return {
        **video_row,
        "sample_id": f"{pair.pair_id}-image",
        "modality": "image",
        "source_key": pair.key_source,
        "target_key": pair.key_target,
        "mask_key": pair.key_mask,
    }


def _rejection(
    pair: Any, settings: QcSettings, reviewer: Reviewer | None, row: dict[str, Any]
) -> str | None:
    if pair.status != "ok":
        return f"generation failed: {pair.reason}"
    metrics = {
        k: getattr(pair, k)
        for k in (
            "frames_source",
            "frames_target",
            "mask_fraction",
            "mask_stability",
            "inside_change",
            "outside_change",
            "total_change",
        )
    }
    reason = qc_rejection(metrics, pair.edit_type, settings.thresholds)
    if reason or reviewer is None:
        return reason
    try:
        verdict = reviewer(pair)
    except Exception as exc:  # an unreachable or confused VLM marks this pair, not the run
        log.warning("VLM review failed for %s: %s", pair.pair_id, exc)
        return f"vlm review failed: {exc}"
    row.update(vlm_score=verdict.score, instruction=verdict.instruction or pair.instruction)
    if not verdict.keep:
        return f"vlm rejected: {verdict.reason}"
    if verdict.score < settings.vlm.min_score:
        return (
            f"vlm score too low ({verdict.score:g} < {settings.vlm.min_score:g}): {verdict.reason}"
        )
    return None
