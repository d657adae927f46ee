"""A tiny ``qc_dataset`` written straight to storage: moving squares removed or recoloured."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from viva_pipelines.masks.shard import save_mask
from viva_pipelines.storage import Storage
from viva_pipelines.train.config import GrpoConfig, SftConfig
from viva_pipelines.video.io import write_video

SIZE, FRAMES = 32, 9


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _clip(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gradient background ``[T, S, S, 3]``, the same with a red square drifting over it,
    and the square's masks ``[T, S, S]``."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, SIZE, dtype=np.float32)
    background = np.stack(
        [ramp[None, :].repeat(SIZE, 0), ramp[:, None].repeat(SIZE, 1), np.full((SIZE, SIZE), 90.0)],
        -1,
    )
    empty = np.repeat(background[None], FRAMES, 0).astype(np.uint8)
    frames = empty.copy()
    masks = np.zeros((FRAMES, SIZE, SIZE), bool)
    y, x = rng.integers(4, 14, size=2)
    for t in range(FRAMES):
        masks[t, y : y + 10, x + t : x + t + 10] = True
    frames[masks] = (230, 30, 30)
    return empty, frames, masks


def write_tiny_dataset(storage: Storage, videos: int = 4) -> pd.DataFrame:
    """``videos`` source clips x (remove, color) edits, as video and image rows, half in val."""
    rows = []
    for v in range(videos):
        removed, source, masks = _clip(v)
        recolour = source.copy()
        recolour[masks] = (30, 30, 230)
        split = "val" if v % 2 else "train"
        for edit, target, instruction, target_caption in (
            ("remove", removed, "Remove the red square.", "a colour gradient"),
            ("color", recolour, "Make the red square blue.", "a blue square over a gradient"),
        ):
            prefix = f"synthetic_pairs/shard-000000/v{v}-{edit}"
            keys = {"source": f"raw_videos/shard-000000/v{v}.mp4", "target": f"{prefix}/target.mp4"}
            for name, frames in (("source", source), ("target", target)):
                with storage.staged(keys[name]) as local:
                    write_video(local, frames, 8)
            save_mask(storage, f"{prefix}/mask.npz", masks)
            for name, image in (
                ("key_source", source[4]),
                ("key_target", target[4]),
                ("key_mask", masks[4].astype(np.uint8) * 255),
            ):
                storage.write_bytes(f"{prefix}/{name}.png", _png(image))
            reference = ""
            if edit == "color" and v < 2:
                reference = f"{prefix}/reference.png"
                storage.write_bytes(reference, _png(np.full((16, 16, 3), 200, np.uint8)))
            common = {
                "status": "accepted",
                "split": split,
                "edit_type": edit,
                "video_id": f"v{v}",
                "instruction": instruction,
                "reference_key": reference,
                "pair_id": f"v{v}-{edit}",
                "source_caption": "a red square over a gradient",
                "target_caption": target_caption,
            }
            rows.append(
                {
                    **common,
                    "sample_id": f"v{v}-{edit}",
                    "modality": "video",
                    "source_key": keys["source"],
                    "target_key": keys["target"],
                    "mask_key": f"{prefix}/mask.npz",
                }
            )
            rows.append(
                {
                    **common,
                    "sample_id": f"v{v}-{edit}-image",
                    "modality": "image",
                    "source_key": f"{prefix}/key_source.png",
                    "target_key": f"{prefix}/key_target.png",
                    "mask_key": f"{prefix}/key_mask.png",
                }
            )
    manifest = pd.DataFrame(rows)
    storage.write_parquet("qc_dataset/manifest.parquet", manifest)
    return manifest


def tiny_sft_config(root: Path, output: str = "sft_test", **sections: dict) -> SftConfig:
    """A config that trains in seconds: 2 frames of 16x16, batch 4."""
    doc = {
        "output_prefix": output,
        "data": {
            "storage_root": str(root),
            "dataset_version": "tiny",
            "frames": 2,
            "frame_stride": 4,
            "height": 16,
            "width": 16,
        },
        "model": {"instructor": "tiny"},
        "optim": {"batch_size": 4, "max_steps": 6, "warmup_steps": 2},
        "eval": {"every": 3, "val_samples": 4, "sample_count": 2, "sample_steps": 2},
        "runtime": {"checkpoint_every": 3, "threads": 1},
    }
    for section, values in sections.items():
        doc[section] = {**doc.get(section, {}), **values}
    return SftConfig.from_mapping(doc)


def prepare_grpo_inputs(root: Path) -> str:
    """What an Edit-GRPO run needs under ``root``: the tiny dataset, an SFT model trained on it
    under ``sft/model`` and the tiny reward models. Returns the SFT cache's key."""
    import torch

    from viva_pipelines.config.schema import RewardsSettings
    from viva_pipelines.rewards.models import prepare_reward_models
    from viva_pipelines.train import sft
    from viva_pipelines.train.distributed import DistContext
    from viva_pipelines.train.reporting import Reporter

    storage = Storage(str(root))
    manifest = write_tiny_dataset(storage)
    cpu = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with Reporter(enabled=False, tracking_uri=None, run_id=None) as report:
        summary = sft.train(tiny_sft_config(root, "sft"), cpu, report)
    prepare_reward_models(
        storage, manifest, RewardsSettings(tiny_clip_steps=5), clip=None, pickscore=None
    )
    return storage.key_of(summary["cache_uri"])


def tiny_grpo_config(root: Path, output: str, sft_cache: str, **sections: dict) -> GrpoConfig:
    """An Edit-GRPO config over :func:`prepare_grpo_inputs`' model: groups of 2, 3 steps."""
    doc = {
        "output_prefix": output,
        "data": {"storage_root": str(root)},
        "sft_model": "sft/model",
        "sft_cache": sft_cache,
        "sampling": {"group_size": 2, "num_steps": 3, "train_steps": 1},
        "optim": {"groups_per_iteration": 1, "lr": 1e-2},
        "runtime": {"threads": 1},
    }
    for section, values in sections.items():
        doc[section] = {**doc.get(section, {}), **values}
    return GrpoConfig.from_mapping(doc)
