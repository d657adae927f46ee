"""The PNG previews Dagster shows: training curves."""

import io

import numpy as np
import pytest
from PIL import Image

from viva_pipelines.previews import curves


def picture(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_curves_draw_one_panel_per_metric_and_leave_out_empty_ones():
    history = {
        "reward/total_mean": [[i, 1.0 + 0.01 * i] for i in range(1, 41)],
        "eval/instruction": [[0, 0.05], [20, 0.06], [40, 0.07]],
        "eval/pickscore": [[0, 11.5], [20, 11.6], [40, 11.7]],  # its own scale
        "eval/never": [],
    }
    three = picture(curves(history, "rewards"))
    one = picture(curves({"eval/instruction": history["eval/instruction"]}, "rewards"))
    assert three.shape[1] > 2 * one.shape[1]  # three panels side by side, not four
    assert three.shape[0] == one.shape[0]
    assert (three < 128).any() and (three == 255).any()  # something is drawn on white


def test_curves_refuse_a_history_with_nothing_to_draw():
    with pytest.raises(ValueError, match="no curve"):
        curves({"eval/total": []}, "rewards")
