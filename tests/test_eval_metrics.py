"""Benchmark metrics (VIE-Bench style) against values computed by hand: PSNR from a known MSE,
masked SSIM from skimage's full SSIM map, CLIP-T / CLIP-F from a tiny random CLIP's
embeddings with numpy cosines (nothing is downloaded)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from viva_pipelines.embedded.clip import build_tiny_clip
from viva_pipelines.evaluation.metrics import (
    background_preservation,
    clip_frame_consistency,
    clip_text_score,
    edit_region_fidelity,
    psnr,
    ssim,
    target_fidelity,
    video_metrics,
)
from viva_pipelines.rewards.clip_rewards import ClipScorer

TEXTS = ["a red square", "a blue circle"]


def video(seed: int, t: int = 3, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> ClipScorer:
    clip_dir: Path = build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", TEXTS, seed=0)
    return ClipScorer(clip_dir)


# -- PSNR ---------------------------------------------------------------------------------------


def test_psnr_known_mse() -> None:
    a = np.full((1, 2, 2, 3), 100, dtype=np.uint8)
    b = a + np.uint8(10)  # every value differs by 10: MSE 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))


def test_psnr_masked_counts_only_masked_pixels() -> None:
    a = np.full((1, 2, 2, 3), 100, dtype=np.uint8)
    b = a.copy()
    mask = np.zeros((1, 2, 2), dtype=bool)
    mask[0, 0, 0] = True
    b[0, 0, 0] = [104, 96, 100]  # masked pixel: squared errors 16, 16, 0 -> MSE 32 / 3
    b[0, 1, :] = 255  # unmasked pixels wildly different
    b[0, 0, 1] = 0
    assert psnr(a, b, mask=mask) == pytest.approx(10 * math.log10(255**2 / (32 / 3)))


def test_psnr_identical_is_inf_and_empty_mask_fails() -> None:
    a = video(0)
    assert psnr(a, a.copy()) == math.inf
    with pytest.raises(ValueError, match="mask is empty"):
        psnr(a, a, mask=np.zeros(a.shape[:3], dtype=bool))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 16, 16, 3\) vs \(3, 8, 16, 3\)"):
        psnr(video(0), video(1, h=8))
    with pytest.raises(ValueError, match=r"\(3, 16, 16, 3\) vs \(2, 16, 16, 3\)"):
        ssim(video(0), video(1, t=2))


# -- SSIM ---------------------------------------------------------------------------------------


def test_ssim_identical_is_one() -> None:
    a = video(0)
    assert ssim(a, a.copy()) == pytest.approx(1.0)


def test_ssim_unmasked_is_mean_of_per_frame_skimage() -> None:
    a, b = video(0), video(1)
    expected = np.mean(
        [
            structural_similarity(x, y, channel_axis=-1, data_range=255)
            for x, y in zip(a, b, strict=True)
        ]
    )
    assert ssim(a, b) == pytest.approx(expected)


def test_ssim_masked_is_mean_of_map_over_mask() -> None:
    a = video(0)
    b = np.clip(a.astype(int) + video(1).astype(int) // 8, 0, 255).astype(np.uint8)
    mask = np.zeros(a.shape[:3], dtype=bool)
    mask[:, 2:9, 4:12] = True
    mask[1] = False  # a frame with nothing masked contributes nothing
    values = []
    for x, y, m in zip(a, b, mask, strict=True):
        _, smap = structural_similarity(x, y, channel_axis=-1, data_range=255, full=True)
        values.append(smap[m])
    expected = np.concatenate(values).mean()
    assert ssim(a, b, mask=mask) == pytest.approx(expected)


def test_background_preservation_ignores_changes_inside_edit_mask() -> None:
    source = video(0, h=32, w=32)
    edited = source.copy()
    edit_mask = np.zeros(source.shape[:3], dtype=bool)
    edit_mask[:, 12:20, 12:20] = True
    edited[edit_mask] = 255 - edited[edit_mask]
    result = background_preservation(source, edited, edit_mask)
    assert result["bg_psnr"] == math.inf
    # Windows near the mask border see the change, so SSIM is only close to 1.
    assert 0.9 < result["bg_ssim"] < 1.0


def test_background_preservation_full_mask_is_nan() -> None:
    source, edited = video(0), video(1)
    result = background_preservation(source, edited, np.ones(source.shape[:3], dtype=bool))
    assert set(result) == {"bg_psnr", "bg_ssim"}
    assert math.isnan(result["bg_psnr"])
    assert math.isnan(result["bg_ssim"])


def test_edit_region_fidelity_counts_only_the_region_and_is_nan_for_a_global_edit() -> None:
    target = video(0)
    edited = target.copy()
    mask = np.zeros(target.shape[:3], dtype=bool)
    mask[:, 4:8, 4:8] = True
    edited[~mask] = 0  # wrong everywhere but the region: no effect
    edited[:, 4:8, 4:8] = np.clip(target[:, 4:8, 4:8].astype(int) + 10, 0, 255)
    expected = psnr(edited, target, mask=mask)
    assert edit_region_fidelity(edited, target, mask) == {"region_psnr": expected}
    assert 25 < expected < 30  # an error of at most 10 grey levels: 28.1 dB when all are 10
    full = np.ones(target.shape[:3], dtype=bool)
    assert math.isnan(edit_region_fidelity(edited, target, full)["region_psnr"])


def test_target_fidelity_whole_frame() -> None:
    edited, target = video(0), video(1)
    assert target_fidelity(edited, target) == {
        "target_psnr": psnr(edited, target),
        "target_ssim": ssim(edited, target),
    }


# -- CLIP ---------------------------------------------------------------------------------------


def test_clip_text_score_by_hand(scorer: ClipScorer) -> None:
    frames = video(2, t=4)
    img = scorer.image_embeddings(frames).numpy().astype(np.float64)
    txt = scorer.text_embeddings(["a red square"]).numpy().astype(np.float64)[0]
    cosines = [float(np.dot(e, txt) / (np.linalg.norm(e) * np.linalg.norm(txt))) for e in img]
    assert clip_text_score(scorer, frames, "a red square") == pytest.approx(
        np.mean(cosines), abs=1e-5
    )


def test_clip_frame_consistency_by_hand(scorer: ClipScorer) -> None:
    frames = video(3, t=4)
    img = scorer.image_embeddings(frames).numpy().astype(np.float64)
    cosines = [
        float(np.dot(img[t], img[t + 1]) / (np.linalg.norm(img[t]) * np.linalg.norm(img[t + 1])))
        for t in range(len(img) - 1)
    ]
    assert clip_frame_consistency(scorer, frames) == pytest.approx(np.mean(cosines), abs=1e-5)


def test_clip_frame_consistency_identical_frames_and_single_frame(scorer: ClipScorer) -> None:
    still = np.repeat(video(4, t=1), 5, axis=0)
    assert clip_frame_consistency(scorer, still) == pytest.approx(1.0, abs=1e-5)
    assert math.isnan(clip_frame_consistency(scorer, video(4, t=1)))


# -- all together -------------------------------------------------------------------------------


def test_video_metrics_keys(scorer: ClipScorer) -> None:
    source, edited, target = video(5), video(6), video(7)
    mask = np.zeros(source.shape[:3], dtype=bool)
    mask[:, 4:10, 4:10] = True

    base = video_metrics(scorer, source, edited, target_caption="a blue circle")
    assert set(base) == {"clip_t", "clip_f"}
    assert base["clip_t"] == pytest.approx(
        clip_text_score(scorer, edited, "a blue circle"), abs=1e-6
    )
    assert base["clip_f"] == pytest.approx(clip_frame_consistency(scorer, edited), abs=1e-6)

    full = video_metrics(
        scorer, source, edited, target_caption="a blue circle", edit_mask=mask, target=target
    )
    assert set(full) == {
        "clip_t",
        "clip_f",
        "bg_psnr",
        "bg_ssim",
        "target_psnr",
        "target_ssim",
        "region_psnr",
    }
    assert full["region_psnr"] == psnr(edited, target, mask=mask)
    assert full["bg_psnr"] == background_preservation(source, edited, mask)["bg_psnr"]
    assert full["target_ssim"] == ssim(edited, target)

    only_mask = video_metrics(scorer, source, edited, target_caption="x", edit_mask=mask)
    assert set(only_mask) == {"clip_t", "clip_f", "bg_psnr", "bg_ssim"}
