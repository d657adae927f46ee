"""The reward models of Edit-GRPO: pretrained CLIP / PickScore from conf, or the demo's tiny
CLIP trained on the dataset so the rewards mean something in the demo world.

Either way the result is a small JSON record (``reward_models/models.json``) naming each
model's location and identity; downstream code loads them the same way, with
``ClipScorer(location)`` (``from_pretrained``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from viva_pipelines.config.schema import RewardsSettings
from viva_pipelines.storage import Storage

if TYPE_CHECKING:
    from viva_pipelines.rewards.clip_rewards import ClipScorer

ASSET = "reward_models"
RECORD_KEY = f"{ASSET}/models.json"
TINY_PREFIX = f"{ASSET}/tiny_clip"


def prepare_reward_models(
    storage: Storage,
    manifest: pd.DataFrame,
    settings: RewardsSettings,
    *,
    clip: str | None,
    pickscore: str | None,
) -> dict[str, Any]:
    """Resolve (production) or train (demo) the reward models and write their record.

    With ``clip`` and ``pickscore`` set (local paths or hub ids) they are loaded once to check
    them and record their identity (name, revision, weights hash). Without them a tiny CLIP is
    trained on the accepted pairs' frames and captions and serves as both; its validation
    retrieval accuracy goes into the record.
    """
    from viva_pipelines.rewards.clip_rewards import ClipScorer

    if bool(clip) != bool(pickscore):
        raise ValueError(
            "set both models.clip and models.pickscore, or neither (the tiny demo CLIP)"
        )
    if clip and pickscore:
        record = {
            "clip": {"location": clip, "identity": ClipScorer(clip).identity},
            "pickscore": {
                "location": pickscore,
                "processor": settings.pickscore_processor,
                "identity": ClipScorer(pickscore, processor=settings.pickscore_processor).identity,
            },
            "trained": None,
        }
    else:
        record = _train_tiny(storage, manifest, settings)
    storage.write_bytes(RECORD_KEY, json.dumps(record, indent=1, sort_keys=True).encode())
    return record


def _train_tiny(storage: Storage, manifest: pd.DataFrame, settings: RewardsSettings) -> dict:
    from viva_pipelines.embedded.clip import build_tiny_clip, dataset_pairs, train_tiny_clip
    from viva_pipelines.rewards.clip_rewards import ClipScorer

    images, captions, val_images, val_captions = dataset_pairs(
        storage, manifest, frames_per_video=settings.frames_per_video
    )
    if len(images) == 0:
        raise ValueError("no captioned frames in the dataset to train the demo CLIP on")
    with tempfile.TemporaryDirectory(prefix="viva-tiny-clip-") as tmp:
        build_tiny_clip(tmp, [*captions, *val_captions], seed=settings.seed)
        metrics = train_tiny_clip(
            tmp,
            images,
            captions,
            val_images=val_images if len(val_images) else None,
            val_captions=val_captions or None,
            steps=settings.tiny_clip_steps,
            seed=settings.seed,
        )
        location = storage.put_dir(tmp, TINY_PREFIX)
    entry = {"location": location, "identity": ClipScorer(_local(storage, location)).identity}
    return {"clip": entry, "pickscore": {**entry, "processor": None}, "trained": metrics}


def load_scorers(
    storage: Storage, record: dict[str, Any], scratch: str | os.PathLike
) -> tuple[ClipScorer, ClipScorer]:
    """The CLIP and PickScore scorers a ``models.json`` record names (one object when both
    are the same model, as in the demo); remote models are copied under ``scratch``."""
    from viva_pipelines.rewards.clip_rewards import ClipScorer

    clip_location = record["clip"]["location"]
    clip = ClipScorer(storage.local_dir(clip_location, Path(scratch, "clip")))
    pick_location = record["pickscore"]["location"]
    if pick_location == clip_location:
        return clip, clip
    pick = ClipScorer(
        storage.local_dir(pick_location, Path(scratch, "pick")),
        processor=record["pickscore"].get("processor"),
    )
    return clip, pick


def _local(storage: Storage, location: str) -> str:
    return (
        location if not storage.is_remote else str(storage.get_dir(TINY_PREFIX, tempfile.mkdtemp()))
    )
