"""Glue between ``qc_dataset`` rows and the VLM pair review."""

from __future__ import annotations

from typing import Any

from viva_pipelines.masks.shard import load_frames
from viva_pipelines.qc.dataset import Reviewer
from viva_pipelines.storage import Storage
from viva_pipelines.vlm.base import VlmBackend
from viva_pipelines.vlm.review import PairVerdict, review_pair


def make_pair_reviewer(backend: VlmBackend, storage: Storage, max_frames: int = 4) -> Reviewer:
    """A reviewer that shows the VLM ``max_frames`` sampled frames of a pair's two videos."""

    def review(pair: Any) -> PairVerdict:
        source = load_frames(storage, pair.source_key)
        target = load_frames(storage, pair.target_key)
        return review_pair(
            backend, source, target, pair.instruction, pair.edit_type, max_frames=max_frames
        )

    return review
