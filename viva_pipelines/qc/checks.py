"""The blocking checks on ``qc_dataset``: each returns ``(passed, description)``."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from viva_pipelines.qc.dataset import ACCEPTED, TRAIN
from viva_pipelines.storage import Storage

KEY_COLUMNS = ("source_key", "target_key", "mask_key", "reference_key")


def _accepted(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[manifest["status"] == ACCEPTED]


def train_split_non_empty(manifest: pd.DataFrame) -> tuple[bool, str]:
    accepted = _accepted(manifest)
    train = accepted[accepted["split"] == TRAIN]
    return not train.empty, f"{len(train)} accepted training samples"


def edit_types_present(manifest: pd.DataFrame, edit_types: Sequence[str]) -> tuple[bool, str]:
    present = set(_accepted(manifest)["edit_type"])
    missing = [t for t in edit_types if t not in present]
    if missing:
        return False, f"no accepted pair of type: {', '.join(missing)}"
    return True, f"all {len(edit_types)} configured edit types present"


def no_video_in_two_splits(manifest: pd.DataFrame) -> tuple[bool, str]:
    splits = manifest.groupby("video_id")["split"].nunique()
    leaked = sorted(splits[splits > 1].index)
    if leaked:
        return False, f"{len(leaked)} source videos in both splits, e.g. {leaked[:3]}"
    return True, f"{len(splits)} source videos, each in one split"


def referenced_files_exist(storage: Storage, manifest: pd.DataFrame) -> tuple[bool, str]:
    """One listing per ``{asset}/{shard}`` prefix instead of one request per file: on S3 that
    is thousands of requests for a million pairs instead of millions."""
    keys = set(_accepted(manifest)[list(KEY_COLUMNS)].stack().dropna())
    prefixes = {"/".join(key.split("/")[:2]) for key in keys}
    stored = {key for prefix in sorted(prefixes) for key in storage.list(prefix)}
    missing = sorted(keys - stored)
    if missing:
        return False, f"{len(missing)} of {len(keys)} referenced files missing, e.g. {missing[:3]}"
    return True, f"all {len(keys)} referenced files exist"
