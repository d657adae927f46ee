"""Automatic benchmark metrics for instruction-based video editing (VIE-Bench style).

Videos are ``uint8`` numpy arrays ``[T, H, W, 3]``; edit masks are ``bool [T, H, W]`` with True
marking the region the instruction asks to change.

- PSNR / SSIM against the source *outside* the edit mask (background preservation): an edit
  should leave everything it was not asked to touch alone.
- PSNR / SSIM against a ground-truth target over the whole frame (target fidelity), when a
  target exists, and PSNR against it *inside* the edit mask (edit-region fidelity): the pixels
  the instruction is about, where returning the source is wrong by construction.
- CLIP-T: mean over frames of the cosine between each edited frame and the target caption
  (does the edit show what was asked for).
- CLIP-F: mean cosine between the CLIP embeddings of adjacent edited frames (temporal
  consistency; flicker lowers it).

The CLIP metrics take a :class:`~viva_pipelines.rewards.clip_rewards.ClipScorer`, whose
embeddings are already L2-normalised, so cosines are plain dot products.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from viva_pipelines.rewards.clip_rewards import ClipScorer

#: Peak value of ``uint8`` pixels, the data range of PSNR and SSIM.
DATA_RANGE = 255.0


def _check_video(video: np.ndarray, name: str) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name} must be [T, H, W, 3], got shape {video.shape}")
    if video.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    return video


def _check_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, ...]:
    """Both videos validated, with equal shapes (pixel metrics compare frame k to frame k)."""
    a = _check_video(a, names[0])
    b = _check_video(b, names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} differ in shape: {a.shape} vs {b.shape}; pixel metrics "
            "need frames of the same size and the same frame count"
        )
    return a, b


def _check_mask(mask: np.ndarray, video_shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"{name} must be a bool array, got dtype {mask.dtype}")
    if mask.shape != video_shape[:3]:
        raise ValueError(f"{name} has shape {mask.shape}, the videos need {video_shape[:3]}")
    return mask


def psnr(a: np.ndarray, b: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """PSNR in dB between two videos, from the MSE over all pixels and channels, or, with
    ``mask`` (``bool [T, H, W]``, broadcast over channels), over the pixels where it is True
    only. The MSE is pooled over all frames (not a mean of per-frame PSNRs), so one identical
    frame cannot make the result infinite.

    Identical inputs (MSE 0) give ``float('inf')``, the mathematical limit; callers that
    average PSNRs over a data set should decide how to treat it. An all-False mask raises
    ValueError: there is nothing to measure.
    """
    a, b = _check_pair(a, b, ("a", "b"))
    diff = a.astype(np.float64) - b.astype(np.float64)
    if mask is not None:
        mask = _check_mask(mask, a.shape, "mask")
        if not mask.any():
            raise ValueError("mask is empty (all False): no pixels to compute PSNR over")
        diff = diff[mask]  # [N, 3]: the masked pixels, all channels
    mse = float(np.mean(diff**2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


#: PSNR is infinite for identical pixels (the identity baseline's background); averages use
#: this ceiling instead, above any PSNR an 8-bit edit can reach by accident.
PSNR_CAP = 100.0


def capped_psnr(a: np.ndarray, b: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """:func:`psnr` for tables that are averaged: at most :data:`PSNR_CAP`, and NaN (left out
    of a mean) where ``mask`` selects no pixel."""
    if mask is not None and not np.asarray(mask).any():
        return math.nan
    return min(psnr(a, b, mask=mask), PSNR_CAP)


def ssim(a: np.ndarray, b: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Mean SSIM between two videos: skimage's ``structural_similarity`` per frame (RGB,
    ``data_range=255``, default 7x7 window, so frames need H and W >= 7), averaged over frames.

    With ``mask`` (``bool [T, H, W]``), the mean of the per-pixel SSIM map over the pixels where
    the mask is True, pooled over all frames and channels ("kept pixels only"). The scalar
    SSIM is the mean of that same map over the whole (edge-cropped) frame, so averaging the map
    over a region is the natural restriction of SSIM to the region; cropping or zeroing the
    frame instead would invent edges that SSIM then penalises. Windows near the mask border
    still see pixels across it, so a change just outside the region lowers the score a little.
    Note that a full mask therefore differs slightly from the unmasked value, which skimage
    averages over the map with a half-window border cropped. An all-False mask raises
    ValueError.
    """
    from skimage.metrics import structural_similarity

    a, b = _check_pair(a, b, ("a", "b"))
    if mask is None:
        scores = [
            structural_similarity(fa, fb, channel_axis=-1, data_range=DATA_RANGE)
            for fa, fb in zip(a, b, strict=True)
        ]
        return float(np.mean(scores))
    mask = _check_mask(mask, a.shape, "mask")
    if not mask.any():
        raise ValueError("mask is empty (all False): no pixels to compute SSIM over")
    total = 0.0
    count = 0
    for fa, fb, fm in zip(a, b, mask, strict=True):
        if not fm.any():
            continue
        _, smap = structural_similarity(fa, fb, channel_axis=-1, data_range=DATA_RANGE, full=True)
        picked = smap[fm]  # [N, 3]
        total += float(picked.sum())
        count += picked.size
    return total / count


def background_preservation(
    source: np.ndarray, edited: np.ndarray, edit_mask: np.ndarray
) -> dict[str, float]:
    """``{"bg_psnr", "bg_ssim"}``: PSNR / SSIM of the edit against the source outside the edit
    region (``~edit_mask``). A mask that is True everywhere (a global edit such as a style
    change) leaves no background: both values are NaN rather than an error, so a benchmark
    can mix local and global edits and skip the NaNs when aggregating."""
    source, edited = _check_pair(source, edited, ("source", "edited"))
    edit_mask = _check_mask(edit_mask, source.shape, "edit_mask")
    background = ~edit_mask
    if not background.any():
        return {"bg_psnr": math.nan, "bg_ssim": math.nan}
    return {
        "bg_psnr": psnr(source, edited, mask=background),
        "bg_ssim": ssim(source, edited, mask=background),
    }


def target_fidelity(edited: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``{"target_psnr", "target_ssim"}``: the edit against a ground-truth target video over
    the whole frame."""
    edited, target = _check_pair(edited, target, ("edited", "target"))
    return {"target_psnr": psnr(edited, target), "target_ssim": ssim(edited, target)}


def edit_region_fidelity(
    edited: np.ndarray, target: np.ndarray, edit_mask: np.ndarray
) -> dict[str, float]:
    """``{"region_psnr"}``: PSNR of the edit against the ground-truth target inside the edit
    region only. A whole-frame mask (a global edit) gives NaN: there the region is the frame
    and ``target_psnr`` already says it."""
    edited, target = _check_pair(edited, target, ("edited", "target"))
    edit_mask = _check_mask(edit_mask, edited.shape, "edit_mask")
    if edit_mask.all():
        return {"region_psnr": math.nan}
    return {"region_psnr": psnr(edited, target, mask=edit_mask)}


def _clip_t(frame_emb: np.ndarray, text_emb: np.ndarray) -> float:
    return float(np.mean(frame_emb @ text_emb))


def _clip_f(frame_emb: np.ndarray) -> float:
    if len(frame_emb) < 2:
        return math.nan
    return float(np.mean(np.sum(frame_emb[:-1] * frame_emb[1:], axis=1)))


def _frame_embeddings(scorer: ClipScorer, video: np.ndarray) -> np.ndarray:
    return scorer.image_embeddings(video).double().numpy()


def _text_embedding(scorer: ClipScorer, text: str) -> np.ndarray:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"CLIP-T needs a non-empty caption, got {text!r}")
    return scorer.text_embeddings([text]).double().numpy()[0]


def clip_text_score(scorer: ClipScorer, video: np.ndarray, text: str) -> float:
    """CLIP-T: mean over frames of the cosine between the frame's CLIP image embedding and the
    embedding of ``text`` (typically the target caption). Frame-wise rather than on a mean
    embedding, so a few off-target frames cannot hide behind the others' average direction."""
    video = _check_video(video, "video")
    return _clip_t(_frame_embeddings(scorer, video), _text_embedding(scorer, text))


def clip_frame_consistency(scorer: ClipScorer, video: np.ndarray) -> float:
    """CLIP-F: mean cosine between the CLIP embeddings of adjacent frames ``(t, t+1)``.
    Adjacent pairs (not all pairs) measure flicker rather than penalising legitimate motion
    over a long clip. A single-frame video has no pair: NaN."""
    video = _check_video(video, "video")
    return _clip_f(_frame_embeddings(scorer, video))


def video_metrics(
    scorer: ClipScorer,
    source: np.ndarray,
    edited: np.ndarray,
    *,
    target_caption: str,
    edit_mask: np.ndarray | None = None,
    target: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics that apply to one edit: ``clip_t`` and ``clip_f`` always; ``bg_psnr`` and
    ``bg_ssim`` when ``edit_mask`` is given; ``target_psnr`` and ``target_ssim`` when a
    ground-truth ``target`` is given; ``region_psnr`` when both are. The edited frames go through CLIP once for both CLIP
    metrics."""
    source, edited = _check_pair(source, edited, ("source", "edited"))
    frame_emb = _frame_embeddings(scorer, edited)
    out = {
        "clip_t": _clip_t(frame_emb, _text_embedding(scorer, target_caption)),
        "clip_f": _clip_f(frame_emb),
    }
    if edit_mask is not None:
        out.update(background_preservation(source, edited, edit_mask))
    if target is not None:
        out.update(target_fidelity(edited, target))
        if edit_mask is not None:
            out.update(edit_region_fidelity(edited, target, edit_mask))
    return out
