"""CLIP-based rewards for Edit-GRPO (docs/method.md).

A group of ``G`` candidate edits of one source video is scored as

``R = w_IF * R_IF + w_SP * R_SP + w_PS * R_PS``

with ``C`` the frame-averaged CLIP cosine similarity:

- ``R_IF = C(V_edit, t_target) - C(V_edit, t_source)``: instruction following. The edited
  video should match the caption of the wanted result better than the caption of the source;
  the difference cancels what the two captions share (the unedited scene), so only the edit
  itself is rewarded.
- ``R_SP = C(V_src, V_edit)``: source preservation. Frame ``k`` of the edit against frame
  ``k`` of the source (image-image cosine), averaged over frames: an edit that keeps
  everything but the instructed change stays close to the source frame by frame. Pairing by
  frame (rather than comparing mean embeddings) also penalises temporal scrambling.
- ``R_PS = PickScore(V_edit, t_target)``: aesthetic / human preference. PickScore_v1 is a
  CLIPModel; its score is ``exp(logit_scale) * cos(image, text)``, exactly what the PickScore
  authors compute, averaged over frames.

Everything is batched: the ``G x T`` frames of a group go through an image tower in one call
(chunked by :attr:`ClipScorer.batch_size`), and the distinct captions are embedded once. The
models are frozen and run under ``torch.no_grad``: rewards are constants to the policy
gradient. Rewards come back as ``float32 [G]`` tensors on the CPU.

Frames are ``uint8`` RGB, ``[..., H, W, 3]``, as numpy arrays or torch tensors; each model's own
image processor (PIL backend) resizes and normalises them, so source and edited frames may
have different sizes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viva_pipelines.model.sources import dtype_of, local_model_dir
from viva_pipelines.storage import sha256_file
from viva_pipelines.train.config import RewardWeights

#: Weight files looked at (in this order of preference) for a local checkpoint's sha256;
#: ``from_pretrained`` prefers safetensors too.
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")

Frames = np.ndarray | torch.Tensor
Captions = str | Sequence[str]


# -- the scorer ---------------------------------------------------------------------------------


def weights_sha256(directory: Path) -> str | None:
    """The sha256 of a local checkpoint's weights: of the single weights file, or, for a
    sharded checkpoint, of the lines ``"<file name> <file sha256>"`` in name order. None when
    the directory holds no weights file."""
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(directory.glob(pattern))
        if len(files) == 1:
            return sha256_file(files[0])
        if files:
            lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
            return hashlib.sha256(lines.encode()).hexdigest()
    return None


def _pin_revision(name: str, revision: str | None) -> Any:
    """Resolve a hub revision (None: the default branch) to its commit once, so the model,
    tokenizer and processor load from one repository state and the commit can be recorded.
    Best effort: when it cannot be resolved (offline without a cache entry, transformers 4),
    the revision comes back unchanged and loading reports any real problem."""
    try:
        from transformers.utils.hub import resolve_revision
    except ImportError:
        return revision
    return resolve_revision(name, revision)


def _commit_of(revision: Any) -> str | None:
    """The commit hash a (resolved) revision stands for, when known."""
    resolved = getattr(revision, "resolved", None)
    if isinstance(resolved, str):
        return resolved
    if isinstance(revision, str) and len(revision) == 40:
        try:
            int(revision, 16)
        except ValueError:
            return None
        return revision
    return None


def pooled_embeddings(output: Any) -> torch.Tensor:
    """The projected embedding from ``get_image_features`` / ``get_text_features``: a tensor in
    transformers 4, the ``pooler_output`` of a model output in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalised(embeddings: torch.Tensor) -> torch.Tensor:
    embeddings = embeddings.float()
    return embeddings / embeddings.norm(dim=-1, keepdim=True)


def as_frames(frames: Frames, ndim: int, what: str) -> np.ndarray:
    """``frames`` as a ``uint8`` numpy array of ``ndim`` dimensions ending in ``[H, W, 3]``;
    anything else fails, naming ``what``. Float frames are refused rather than guessed at
    (0..1 or 0..255?)."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise ValueError(f"{what}: expected uint8 frames, got a {frames.dtype} tensor")
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array or torch tensor, got {type(frames)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 frames, got {frames.dtype}")
    if frames.ndim != ndim or frames.shape[-1] != 3 or 0 in frames.shape:
        lead = {4: "N", 5: "G, T"}.get(ndim, "...")
        raise ValueError(f"{what}: expected uint8 [{lead}, H, W, 3], got shape {frames.shape}")
    return np.ascontiguousarray(frames)


class ClipScorer:
    """A ``transformers`` ``CLIPModel`` with its tokenizer and image processor, frozen and
    batched: the one object the rewards need from a CLIP checkpoint.

    ``model``: a local directory (``save_pretrained`` output, e.g. a tiny CLIP from
    :mod:`viva_pipelines.embedded.clip`) or a hub id (``openai/clip-vit-large-patch14``,
    ``yuvalkirstain/PickScore_v1``; the hub revision is pinned to a commit once, so the model,
    tokenizer and processor come from the same state). ``processor``: where the tokenizer
    and image processor come from when the model's repository has none: PickScore_v1 ships
    only weights and is used with ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``'s processor, as its
    authors do (default: ``model``). ``dtype``: the weights' dtype; embeddings come back
    float32. ``batch_size``: frames (or captions) per forward pass.

    The image processor is loaded with the PIL backend whether or not torchvision is
    installed (as the instructor does): the same frame gives the same reward on every machine.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        batch_size: int = 64,
        revision: str | None = None,
        processor: str | Path | None = None,
    ) -> None:
        # Imported here: transformers takes seconds to import, and code that only needs the
        # reward weights (Dagster definitions, configs) should not pay for it.
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        torch_dtype = dtype_of(dtype)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        name = str(model)
        processor_name = name if processor is None else str(processor)
        self.local_dir: Path | None = local_model_dir(name, "CLIP model")
        processor_local = local_model_dir(processor_name, "CLIP processor", marker=None)
        self.batch_size = batch_size
        self.device = torch.device(device)
        if self.local_dir is None:
            revision = _pin_revision(name, revision)
        processor_revision = revision if processor_name == name else None
        if processor_local is None and processor_name != name:
            processor_revision = _pin_revision(processor_name, None)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                processor_name, revision=processor_revision
            )
            self.image_processor = AutoImageProcessor.from_pretrained(
                processor_name, revision=processor_revision, backend="pil"
            )
            self.model = CLIPModel.from_pretrained(name, revision=revision, dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            # transformers reports a missing or unreadable tokenizer as a ValueError.
            raise OSError(
                f"cannot load the CLIP model {name!r} with the tokenizer and image processor of "
                f"{processor_name!r} (local directories or hub ids): {exc}"
            ) from exc
        self.model.to(self.device).eval().requires_grad_(False)
        self.name_or_path = name
        self.processor_name_or_path = processor_name
        config = self.model.config
        self.image_size: int = int(config.vision_config.image_size)
        self.max_text_length: int = int(config.text_config.max_position_embeddings)
        # The commit a hub checkpoint was loaded from: transformers 5 resolves it up front (see
        # _pin_revision), transformers 4 records it on the config. None for a local directory.
        self._commit: str | None = None
        if self.local_dir is None:
            self._commit = _commit_of(revision) or getattr(config, "_commit_hash", None)

    def __repr__(self) -> str:
        return f"ClipScorer({self.name_or_path!r}, device={str(self.device)!r})"

    # -- lineage -------------------------------------------------------------------------------
    @cached_property
    def identity(self) -> dict[str, str | None]:
        """What was loaded, for lineage: ``name_or_path``; ``revision``, the hub commit when
        known (None for a local directory); ``sha256`` of the weights file(s) for a local
        directory (see :func:`weights_sha256`), None for a hub id, whose commit pins it;
        ``processor``, where the tokenizer and image processor came from. Computed on first
        access: hashing a ViT-H checkpoint takes seconds."""
        return {
            "name_or_path": self.name_or_path,
            "revision": self._commit,
            "sha256": weights_sha256(self.local_dir) if self.local_dir is not None else None,
            "processor": self.processor_name_or_path,
        }

    @property
    def logit_scale(self) -> float:
        """The similarity multiplier ``exp(model.logit_scale)`` (100 for OpenAI CLIP and
        PickScore_v1): PickScore is this times the cosine."""
        return float(self.model.logit_scale.detach().float().exp())

    # -- inputs --------------------------------------------------------------------------------
    def pixel_values(self, frames: Frames) -> torch.Tensor:
        """``float32 [N, 3, s, s]`` on the CPU: ``uint8 [N, H, W, 3]`` frames through the image
        processor (resize, centre crop, normalise), ``s`` the vision tower's image size."""
        frames = as_frames(frames, 4, "frames")
        pixels = self.image_processor(
            images=list(frames), return_tensors="pt", input_data_format="channels_last"
        )["pixel_values"]
        if tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.name_or_path}: the image processor makes {tuple(pixels.shape[-2:])} "
                f"images but the vision tower expects {self.image_size}x{self.image_size}"
            )
        return pixels

    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` (``int64 [M, L]``, right-padded, cut to the text
        tower's positions) for ``texts``, on the CPU."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of strings")
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    # -- embeddings ----------------------------------------------------------------------------
    @torch.no_grad()
    def image_embeddings(self, frames: Frames) -> torch.Tensor:
        """``uint8 [N, H, W, 3]`` -> L2-normalised ``float32 [N, E]`` on the CPU, ``batch_size``
        frames per forward pass."""
        frames = as_frames(frames, 4, "frames")
        out = []
        for start in range(0, len(frames), self.batch_size):
            pixels = self.pixel_values(frames[start : start + self.batch_size])
            pixels = pixels.to(self.device, self.model.dtype)
            out.append(
                _normalised(pooled_embeddings(self.model.get_image_features(pixel_values=pixels)))
            )
        return torch.cat(out).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``M`` captions -> L2-normalised ``float32 [M, E]`` on the CPU."""
        texts = list(texts) if not isinstance(texts, str) else texts
        if not texts:
            raise ValueError("no texts to embed")
        out = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.text_inputs(texts[start : start + self.batch_size])
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            out.append(_normalised(pooled_embeddings(self.model.get_text_features(**inputs))))
        return torch.cat(out).cpu()

    def video_embeddings(self, videos: Frames) -> torch.Tensor:
        """``uint8 [G, T, H, W, 3]`` -> ``float32 [G, T, E]``: all ``G x T`` frames in one
        (chunked) pass through the image tower."""
        videos = as_frames(videos, 5, "videos")
        groups, frames = videos.shape[:2]
        flat = self.image_embeddings(videos.reshape(groups * frames, *videos.shape[2:]))
        return flat.view(groups, frames, -1)


# -- rewards ------------------------------------------------------------------------------------


def _caption_list(captions: Captions, groups: int, what: str) -> list[str]:
    """``captions`` as ``groups`` strings: one string is shared by every candidate (a group
    edits one source with one instruction), a sequence must have one per candidate."""
    if isinstance(captions, str):
        return [captions] * groups
    captions = list(captions)
    if len(captions) != groups or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{what}: expected one string or {groups} strings, got {captions!r}")
    return captions


def _text_table(scorer: ClipScorer, *caption_lists: list[str]) -> list[torch.Tensor]:
    """Each caption list's embeddings ``[G, E]``, every distinct caption embedded once."""
    unique = list(dict.fromkeys(c for captions in caption_lists for c in captions))
    table = scorer.text_embeddings(unique)
    index = {caption: i for i, caption in enumerate(unique)}
    return [table[[index[c] for c in captions]] for captions in caption_lists]


def _video_text_similarity(videos: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Frame-averaged cosine of ``[G, T, E]`` frames with ``[G, E]`` captions -> ``[G]``."""
    return torch.einsum("gte,ge->gt", videos, texts).mean(dim=1)


def _preservation(source: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Frame-paired cosine, ``[T, E]`` or ``[G, T, E]`` source with ``[G, T, E]`` edits ->
    ``[G]``."""
    return (source.expand_as(edited) * edited).sum(dim=-1).mean(dim=1)


def _source_embeddings(
    scorer: ClipScorer, source: Frames, edited_shape: tuple[int, ...]
) -> torch.Tensor:
    """Source frames ``[T, ...]`` (embedded once, shared by the group) or ``[G, T, ...]``
    -> ``[T, E]`` / ``[G, T, E]``, checked against the edits' ``G`` and ``T``."""
    ndim = source.ndim if isinstance(source, (np.ndarray, torch.Tensor)) else 0
    if ndim == 4:
        source = as_frames(source, 4, "source")
        if len(source) != edited_shape[1]:
            raise ValueError(f"source has {len(source)} frames, the edits {edited_shape[1]}")
        return scorer.image_embeddings(source)
    source = as_frames(source, 5, "source")
    if tuple(source.shape[:2]) != tuple(edited_shape[:2]):
        raise ValueError(
            f"source videos [G, T] = {list(source.shape[:2])} do not match the edits' "
            f"{list(edited_shape[:2])}"
        )
    return scorer.video_embeddings(source)


def _instruction_following(
    videos: torch.Tensor, target: torch.Tensor, source: torch.Tensor
) -> torch.Tensor:
    """``R_IF [G]`` from embeddings: frames ``[G, T, E]``, target and source captions
    ``[G, E]``."""
    return _video_text_similarity(videos, target) - _video_text_similarity(videos, source)


def instruction_following(
    scorer: ClipScorer,
    edited: Frames,
    target_captions: Captions,
    source_captions: Captions,
) -> torch.Tensor:
    """``R_IF [G]`` alone (the benchmark's CLIP-IF) of ``G`` edited videos
    ``uint8 [G, T, H, W, 3]``: frame-averaged cosine with the target caption minus that with
    the source caption (one string or ``G``); :func:`edit_rewards` computes the same term."""
    edited = as_frames(edited, 5, "edited")
    groups = len(edited)
    targets = _caption_list(target_captions, groups, "target_captions")
    sources = _caption_list(source_captions, groups, "source_captions")
    target, source = _text_table(scorer, targets, sources)
    return _instruction_following(scorer.video_embeddings(edited), target, source)


def edit_rewards(
    clip: ClipScorer,
    pick: ClipScorer,
    source: Frames,
    edited: Frames,
    source_captions: Captions,
    target_captions: Captions,
    weights: RewardWeights,
) -> dict[str, torch.Tensor]:
    """All three rewards of a group and their weighted sum, each ``float32 [G]``: keys
    ``instruction``, ``preservation``, ``pickscore``, ``total``.

    Each model embeds the edited frames once (``clip`` for R_IF and R_SP, ``pick`` for R_PS;
    once in all when ``pick is clip``), the source once, and each distinct caption once.
    ``source``: ``[T, H, W, 3]`` or ``[G, T, H, W, 3]``; ``edited``: ``[G, T, H, W, 3]``;
    captions: one string or one per candidate."""
    edited = as_frames(edited, 5, "edited")
    groups = len(edited)
    targets = _caption_list(target_captions, groups, "target_captions")
    sources = _caption_list(source_captions, groups, "source_captions")

    source_embeddings = _source_embeddings(clip, source, edited.shape)
    clip_videos = clip.video_embeddings(edited)
    target, source_text = _text_table(clip, targets, sources)
    instruction = _instruction_following(clip_videos, target, source_text)
    preservation = _preservation(source_embeddings, clip_videos)
    if pick is clip:
        pick_videos, pick_target = clip_videos, target
    else:
        pick_videos = pick.video_embeddings(edited)
        (pick_target,) = _text_table(pick, targets)
    pick_score = pick.logit_scale * _video_text_similarity(pick_videos, pick_target)
    total = (
        weights.instruction * instruction
        + weights.preservation * preservation
        + weights.pickscore * pick_score
    )
    return {
        "instruction": instruction,
        "preservation": preservation,
        "pickscore": pick_score,
        "total": total,
    }
