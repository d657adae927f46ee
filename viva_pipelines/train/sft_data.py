"""SFT samples: pixels cut from the QC'd dataset, encoded once into a cache, batched per step.

The expensive parts of a sample (instructor tokens, source/target/reference latents) do not
change during training, so :func:`build_cache` computes them once per (dataset version,
instructor, codec, geometry) and writes one small safetensors file per sample under
``{cache_prefix}/{cache_version}/``; its ``index.parquet`` is written last and marks the cache
complete. Afterwards training reads only the cache: the VLM and the codec encoder are not even
loaded.

Batches follow a *global* plan that depends only on ``(seed, step)``: which modality, which
samples, which noise levels, which conditions are dropped and the noise itself. Each rank takes
its slice of the global batch, so any number of processes sees the same data as one process
with the same global batch, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from viva_pipelines.masks.shard import load_frames, load_mask
from viva_pipelines.model.clips import ClipGeometry, to_model_pixels
from viva_pipelines.model.flow_matching import resize_mask_to_latents, sample_sigmas
from viva_pipelines.pairs.captions import mirror_sides, names_a_side
from viva_pipelines.pairs.pixels import changed_pixels
from viva_pipelines.storage import Storage
from viva_pipelines.train.config import LossConfig
from viva_pipelines.video.images import decode_image

log = logging.getLogger(__name__)

VIDEO, IMAGE = "video", "image"
#: Bumped whenever the code that fills the cache changes what it writes.
CACHE_FORMAT = "viva-sft-cache/2"
INDEX_NAME = "index.parquet"
UNCONDITIONAL_NAME = "unconditional.safetensors"


#: ``qc_dataset`` columns training reads: text that every accepted row must have ...
REQUIRED_TEXT = (
    "sample_id", "status", "modality", "split", "instruction", "source_key", "target_key",
)  # fmt: skip
#: ... and text that may be null (no mask, no reference image, unknown edit type).
NULLABLE_TEXT = ("edit_type", "mask_key", "reference_key")


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def read_dataset_manifest(storage: Storage, key: str) -> pd.DataFrame:
    """The ``qc_dataset`` manifest at ``key``, checked for what training needs.

    A manifest is user-provided input (it can be edited or produced elsewhere), so a missing
    file, a file that is not Parquet, a missing column or a column of the wrong type is one
    ``ValueError`` naming the manifest and the problem, before any model is loaded.
    """
    try:
        frame = storage.read_parquet(key)
    except FileNotFoundError:
        raise ValueError(f"{key}: not found under {storage.root_uri}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ValueError(f"{key}: not a readable Parquet file ({exc})") from None
    missing = [c for c in (*REQUIRED_TEXT, *NULLABLE_TEXT) if c not in frame.columns]
    if missing:
        raise ValueError(f"{key}: missing column(s) {', '.join(map(repr, missing))}")
    for column in (*REQUIRED_TEXT, *NULLABLE_TEXT):
        values = frame[column]
        bad = [v for v in values.tolist() if not (isinstance(v, str) or _is_null(v))]
        if bad:
            example = bad[0]
            raise ValueError(
                f"{key}: column {column!r} must hold strings, found {type(example).__name__}"
                f" {example!r} (dtype {values.dtype})"
            )
    accepted = frame[frame["status"] == "accepted"]
    for column in REQUIRED_TEXT:
        empty = accepted[column].isna() | (accepted[column].astype(object) == "")
        if empty.any():
            raise ValueError(
                f"{key}: column {column!r} is empty in {int(empty.sum())} accepted row(s)"
            )
    for column, allowed in (("modality", (VIDEO, IMAGE)), ("split", ("train", "val"))):
        unknown = sorted(set(accepted[column]) - set(allowed))
        if unknown:
            raise ValueError(
                f"{key}: column {column!r} has unknown value(s) {', '.join(map(repr, unknown))}"
                f" (known: {', '.join(allowed)})"
            )
    duplicated = accepted["sample_id"][accepted["sample_id"].duplicated()]
    if not duplicated.empty:
        raise ValueError(f"{key}: duplicate sample_id {duplicated.iloc[0]!r} among accepted rows")
    return frame


@dataclass
class PixelSample:
    """One training pair in pixel space. Videos: ``[3, T, H, W]`` float in [-1, 1]; an image
    sample has ``T = 1``. ``mask``: ``[1, T, H, W]`` in [0, 1]. ``first_frame`` and
    ``reference_image`` are the uint8 RGB images the instructor looks at."""

    instruction: str
    source: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    reference: torch.Tensor | None
    first_frame: np.ndarray
    reference_image: np.ndarray | None

    def flipped(self) -> PixelSample:
        """Every picture flipped left to right (the instruction as it is: a mirrored row
        brings its own, see :func:`with_mirrored`)."""
        return PixelSample(
            instruction=self.instruction,
            source=self.source.flip(-1),
            target=self.target.flip(-1),
            mask=self.mask.flip(-1),
            reference=None if self.reference is None else self.reference.flip(-1),
            first_frame=self.first_frame[:, ::-1].copy(),
            reference_image=(
                None if self.reference_image is None else self.reference_image[:, ::-1].copy()
            ),
        )


def _read_image(storage: Storage, key: str, mode: str = "RGB") -> np.ndarray:
    return decode_image(storage.read_bytes(key), mode)


#: The edit mask of an image pair that comes without one (an external pair may) is where its
#: target moved from its source by more than this (of 255): above the rounding of a
#: re-encoded image, below any visible change.
UNMASKED_CHANGE = 8


def _has(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def load_pixel_sample(storage: Storage, row: Any, geometry: ClipGeometry) -> PixelSample:
    """Read one ``qc_dataset`` row (video or image modality) and cut it to ``geometry``; a
    mirrored twin's (``row.mirrored``, see :func:`with_mirrored`) comes flipped."""
    if row.modality == VIDEO:
        source_all = load_frames(storage, row.source_key)
        target_all = load_frames(storage, row.target_key)
        mask_all = load_mask(storage, row.mask_key)
        count = min(len(source_all), len(target_all), len(mask_all))
        picks = geometry.frame_indices(count)
        source, target, mask = source_all[picks], target_all[picks], mask_all[picks]
        first_frame = source_all[0]
    elif row.modality == IMAGE:
        source = _read_image(storage, row.source_key)[None]
        target = _read_image(storage, row.target_key)[None]
        mask = (
            (_read_image(storage, row.mask_key, "L") > 127)[None]
            if _has(row.mask_key)
            else changed_pixels(source, target, UNMASKED_CHANGE)
        )
        first_frame = source[0]
    else:
        raise ValueError(f"sample {row.sample_id}: unknown modality {row.modality!r}")
    reference_image = _read_image(storage, row.reference_key) if _has(row.reference_key) else None
    fitted_mask = np.stack([geometry.fit(m.astype(np.float32)) for m in mask])
    sample = PixelSample(
        instruction=row.instruction,
        source=to_model_pixels(np.stack([geometry.fit(f) for f in source])),
        target=to_model_pixels(np.stack([geometry.fit(f) for f in target])),
        mask=torch.from_numpy(fitted_mask)[None].float(),
        reference=(
            None
            if reference_image is None
            else to_model_pixels(geometry.fit(reference_image)[None])
        ),
        first_frame=first_frame,
        reference_image=reference_image,
    )
    return sample.flipped() if getattr(row, "mirrored", False) else sample


# -- the cache ------------------------------------------------------------------------------


def cache_version(
    dataset_version: str,
    instructor: dict[str, Any],
    codec: dict[str, Any],
    geometry: ClipGeometry,
    *,
    mirror: bool = False,
    blind: bool = False,
) -> str:
    """Changes whenever a cached tensor would: the data, the instructor, the codec, the cut,
    whether mirrored samples are in it and whether their blind tokens are."""
    doc = {
        "format": CACHE_FORMAT,
        "dataset": dataset_version,
        "instructor": instructor,
        "codec": codec,
        "geometry": geometry.__dict__,
        "mirror": mirror,
    }
    if blind:  # only when on: the caches built before the setting keep their version
        doc["blind"] = True
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: What a mirrored sample's id adds to its pair's (see :func:`with_mirrored`).
MIRRORED_SUFFIX = "~mirrored"


def with_mirrored(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` and, for each training-split row whose instruction says "left" or "right", its
    twin seen in a mirror: ``sample_id`` + :data:`MIRRORED_SUFFIX`, the sides swapped in its
    instruction, ``mirrored`` true (:func:`load_pixel_sample` flips its pictures,
    :meth:`PixelSample.flipped`). Such instructions (adds: "... at the top left") are the only
    ones that tie words to places in the frame, and a dataset has few of them; the twin gives
    every "on the left" an "on the right" over the same content. Other pairs are not
    mirrored: a flipped copy of them teaches nothing new and takes training steps from the
    scenes as they are (measured on the demo's val split, docs/benchmark.md)."""
    rows = rows.assign(mirrored=False)
    sided = rows["instruction"].map(lambda text: isinstance(text, str) and names_a_side(text))
    twins = rows[(rows["split"] == "train") & sided].assign(mirrored=True)
    twins["sample_id"] = twins["sample_id"] + MIRRORED_SUFFIX
    twins["instruction"] = twins["instruction"].map(mirror_sides)
    return pd.concat([rows, twins]).sort_values("sample_id").reset_index(drop=True)


def _sample_key(prefix: str, sample_id: str) -> str:
    return f"{prefix}/samples/{sample_id}.safetensors"


def cache_is_complete(storage: Storage, prefix: str) -> bool:
    return storage.exists(f"{prefix}/{INDEX_NAME}")


#: ``encode(samples) -> (latents per field, token sequences per field)``; see
#: :func:`build_cache`.
Encoder = Callable[
    [Sequence[PixelSample]], tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]
]
#: The cached field of the instructor's tokens for the instruction with a blank first frame
#: and no reference (``loss.frame_dropout``), beside ``tokens``, those of the real pictures.
BLIND_TOKENS = "blind_tokens"


def build_cache(
    storage: Storage,
    prefix: str,
    rows: pd.DataFrame,
    geometry: ClipGeometry,
    encode: Encoder,
    unconditional_tokens: torch.Tensor,
    *,
    rank: int = 0,
    world_size: int = 1,
    chunk: int = 16,
    barrier: Callable[[], None] = lambda: None,
) -> pd.DataFrame:
    """Encode every row once; each rank takes every ``world_size``-th row. Returns the index.

    ``encode`` turns a chunk of same-modality pixel samples into latents
    (``source``/``target``/``mask``: ``[n, C, t, h, w]``, ``reference``: ``[n, C, 1, h, w]``
    with zeros where absent) and condition tokens (``tokens`` and optionally
    :data:`BLIND_TOKENS`, each a list of ``[L_i, D]``, real tokens only).
    ``unconditional_tokens`` ``[L, D]`` are stored beside them for condition dropout.
    Samples already in the cache (a run that stopped while caching) are not encoded again.
    """
    rows = rows.reset_index(drop=True)
    mine = rows.iloc[rank::world_size]
    for modality, group in mine.groupby("modality", sort=True):
        todo = [
            row
            for row in group.itertuples()
            if not storage.exists(_sample_key(prefix, row.sample_id))
        ]
        desc = f"caching {modality} samples (rank {rank})"
        for start in tqdm(range(0, len(todo), chunk), desc=desc, disable=rank != 0):
            batch_rows = todo[start : start + chunk]
            samples = [load_pixel_sample(storage, row, geometry) for row in batch_rows]
            latents, tokens = encode(samples)
            for i, row in enumerate(batch_rows):
                tensors = {name: value[i].contiguous() for name, value in latents.items()}
                for name, sequences in tokens.items():
                    tensors[name] = sequences[i].float().contiguous()
                tensors["has_reference"] = torch.tensor(samples[i].reference is not None)
                storage.write_bytes(_sample_key(prefix, row.sample_id), save_safetensors(tensors))
    barrier()
    index = pd.DataFrame(
        {
            "sample_id": rows["sample_id"],
            "modality": rows["modality"],
            "split": rows["split"],
            "edit_type": rows["edit_type"],
            "instruction": rows["instruction"],
            "key": [_sample_key(prefix, sid) for sid in rows["sample_id"]],
        }
    )
    if rank == 0:
        storage.write_bytes(
            f"{prefix}/{UNCONDITIONAL_NAME}",
            save_safetensors({"tokens": unconditional_tokens.float().contiguous()}),
        )
        storage.write_parquet(f"{prefix}/{INDEX_NAME}", index)
    barrier()
    return index


class CachedSamples:
    """Reads cached samples by position; recently used ones stay in memory."""

    def __init__(self, storage: Storage, index: pd.DataFrame, *, memory_items: int = 4096):
        self.storage = storage
        self.index = index.reset_index(drop=True)
        self._load = functools.lru_cache(maxsize=memory_items)(self._read)

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, key: str) -> dict[str, torch.Tensor]:
        return load_safetensors(self.storage.read_bytes(key))

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return self._load(self.index.at[position, "key"])


def load_unconditional(storage: Storage, prefix: str) -> torch.Tensor:
    """The cached unconditional tokens ``[L, D]``."""
    return load_safetensors(storage.read_bytes(f"{prefix}/{UNCONDITIONAL_NAME}"))["tokens"]


def mask_to_latents(mask: torch.Tensor, latent_shape: Sequence[int]) -> torch.Tensor:
    """Pixel masks ``[n, 1, T, H, W]`` -> latent-grid weights ``[n, 1, t, h, w]``."""
    return resize_mask_to_latents(mask, latent_shape)


# -- batches --------------------------------------------------------------------------------


@dataclass
class Batch:
    """One rank's share of a step. Latents ``[B, C, t, h, w]``; ``reference`` ``[B, C, 1, h, w]``
    (zeros where absent); ``tokens`` ``[B, L, D]`` right-padded with ``token_mask`` ``[B, L]``."""

    source: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    reference: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pad_tokens(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[L_i, D]`` token sequences: ``([B, L, D], mask [B, L] int64)``."""
    length = max(seq.shape[0] for seq in sequences)
    tokens = sequences[0].new_zeros(len(sequences), length, sequences[0].shape[-1])
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for i, seq in enumerate(sequences):
        tokens[i, : seq.shape[0]] = seq
        mask[i, : seq.shape[0]] = 1
    return tokens, mask


def collate(
    items: Sequence[dict[str, torch.Tensor]],
    unconditional: torch.Tensor,
    drop_instruction: torch.Tensor,
    drop_source: torch.Tensor,
    drop_frame: torch.Tensor | None = None,
) -> Batch:
    """Stack cached samples; dropped instructions get the unconditional tokens (and no
    reference), dropped sources get zero source latents, dropped frames the instructor's
    tokens of the instruction alone with a blank picture (:data:`BLIND_TOKENS`)."""
    source = torch.stack([item["source"] for item in items])
    reference = torch.stack([item["reference"] for item in items])
    drop_i = drop_instruction.reshape(-1, 1, 1, 1, 1)
    if drop_frame is None:
        drop_frame = torch.zeros_like(drop_instruction)
    tokens, token_mask = pad_tokens(
        [
            unconditional if drop else item[BLIND_TOKENS] if blind else item["tokens"]
            for item, drop, blind in zip(items, drop_instruction, drop_frame, strict=True)
        ]
    )
    return Batch(
        source=torch.where(drop_source.reshape(-1, 1, 1, 1, 1), 0.0, source),
        target=torch.stack([item["target"] for item in items]),
        mask=torch.stack([item["mask"] for item in items]),
        reference=torch.where(drop_i, 0.0, reference),
        tokens=tokens,
        token_mask=token_mask,
    )


@dataclass
class StepPlan:
    """The global batch of one step (every rank computes the same plan)."""

    modality: str
    positions: torch.Tensor  # [B] positions into the dataset
    sigmas: torch.Tensor  # [B]
    drop_instruction: torch.Tensor  # [B] bool
    drop_source: torch.Tensor  # [B] bool
    drop_frame: torch.Tensor  # [B] bool
    generator: torch.Generator  # continues the step's stream: draw the noise from it

    def share(self, rank: int, world_size: int) -> slice:
        per_rank = len(self.positions) // world_size
        return slice(rank * per_rank, (rank + 1) * per_rank)

    def micro_batches(self, rank: int, world_size: int, accumulation: int) -> list[slice]:
        """The rank's share cut into ``accumulation`` equal micro-batches, run one after the
        other with their gradients summed before the optimizer step: the global batch stays
        ``len(positions)`` at a ``1 / accumulation`` of the activation memory."""
        share = self.share(rank, world_size)
        size = (share.stop - share.start) // accumulation
        return [slice(start, start + size) for start in range(share.start, share.stop, size)]


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def plan_step(
    step: int,
    *,
    seed: int,
    pools: dict[str, np.ndarray],
    video_fraction: float,
    batch_size: int,
    loss: LossConfig,
) -> StepPlan:
    """Choose the modality (video with probability ``video_fraction`` when both pools have
    samples), the samples (uniform with replacement), noise levels (``loss.sigma_*``) and
    dropped conditions (``loss.*_dropout``)."""
    generator = step_generator(seed, step)
    use_video = torch.rand((), generator=generator).item() < video_fraction
    available = [m for m in (VIDEO, IMAGE) if len(pools.get(m, ())) > 0]
    if not available:
        raise ValueError("no training samples")
    modality = VIDEO if use_video else IMAGE
    if modality not in available:
        modality = available[0]
    pool = pools[modality]
    picks = torch.randint(len(pool), (batch_size,), generator=generator)
    sigmas = sample_sigmas(
        batch_size,
        mean=loss.sigma_mean,
        std=loss.sigma_std,
        shift=loss.sigma_shift,
        generator=generator,
    )
    drop_instruction = torch.rand(batch_size, generator=generator) < loss.instruction_dropout
    drop_source = torch.rand(batch_size, generator=generator) < loss.source_dropout
    # Drawn only when on, so that the stream (and the noise drawn from it next) is the same
    # as before the setting when it is off.
    drop_frame = torch.zeros(batch_size, dtype=torch.bool)
    if loss.frame_dropout:
        drop_frame = torch.rand(batch_size, generator=generator) < loss.frame_dropout
    return StepPlan(
        modality=modality,
        positions=torch.from_numpy(np.array(pool))[picks],
        sigmas=sigmas,
        drop_instruction=drop_instruction,
        drop_source=drop_source,
        drop_frame=drop_frame,
        generator=generator,
    )
