"""The sam2 mask backend with tiny random models: real classes and calls, arbitrary detections.

Random weights make what is found meaningless, so the tests pin the plumbing: loading from a
local folder, the box -> SAM 2 -> ``TrackedObject`` handling (given boxes, or every query kept
at threshold 0), the empty cases, and the caption heuristic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, GroundingDinoForObjectDetection, GroundingDinoProcessor

from viva_pipelines.embedded.masks import build_tiny_grounding_dino, tiny_sam2_settings
from viva_pipelines.masks.sam2_backend import (
    Sam2Tracker,
    _distinct_best,
    _grounded_phrase,
    phrases_from_caption,
)

PHRASES = ["red square", "coffee cup"]
T, H, W = 4, 48, 64  # H != W catches transposed masks


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_grounding_dino(tmp_path_factory.mktemp("grounding_dino"))


@pytest.fixture(scope="module")
def permissive(detector_dir: Path) -> Sam2Tracker:
    """Every query is a detection grounded in every phrase: detections are deterministic."""
    settings = tiny_sam2_settings(box_threshold=0.0, text_threshold=0.0, max_objects=2)
    return Sam2Tracker(settings, str(detector_dir), None)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """``uint8 [T, H, W, 3]``: a red square moving right over noise."""
    frames = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    for t in range(T):
        frames[t, 16:32, 4 + 4 * t : 20 + 4 * t] = (255, 0, 0)
    return frames


def test_tiny_detector_reloads_from_its_folder(detector_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(detector_dir)
    model = GroundingDinoForObjectDetection.from_pretrained(detector_dir).eval()
    assert isinstance(processor, GroundingDinoProcessor)
    ids = processor.tokenizer("red square . coffee cup .")["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids

    inputs = processor(
        images=np.zeros((H, W, 3), np.uint8), text="coffee cup .", return_tensors="pt"
    )
    with torch.inference_mode():
        outputs = model(**inputs)
    queries = model.config.num_queries
    assert outputs.logits.shape == (1, queries, model.config.max_text_len)
    assert outputs.pred_boxes.shape == (1, queries, 4)
    # Same seed, same weights: the folder holds what the builder made.
    rebuilt = GroundingDinoForObjectDetection.from_pretrained(
        build_tiny_grounding_dino(detector_dir.parent / "again")
    )
    for (name, saved), (_, again) in zip(
        model.state_dict().items(), rebuilt.state_dict().items(), strict=True
    ):
        assert torch.equal(saved, again), name


def test_track_boxes_gives_one_object_per_box(permissive: Sam2Tracker, clip: np.ndarray) -> None:
    boxes = np.array([[4, 16, 20, 32], [40, 30, 60, 46]], dtype=np.float32)
    objects = permissive.track_boxes(clip, boxes, ["red square", "noise"])

    # Given boxes have no detector confidence: score 1.0, like annotations.
    assert [(o.object_id, o.label, o.score) for o in objects] == [
        (1, "red square", 1.0),
        (2, "noise", 1.0),
    ]
    for obj in objects:
        assert obj.masks.shape == (T, H, W)
        assert obj.masks.dtype == bool

    assert permissive.track_boxes(clip, np.zeros((0, 4)), []) == []
    with pytest.raises(ValueError, match="one label and score per box"):
        permissive.track_boxes(clip, boxes, ["red square"])
    with pytest.raises(ValueError, match="one label and score per box"):
        permissive.track_boxes(clip, boxes, ["red square", "noise"], scores=[0.9])


def test_track_detects_on_frame_zero_and_tracks(permissive: Sam2Tracker, clip: np.ndarray) -> None:
    detections = permissive.detect(clip[0], PHRASES)
    assert 1 <= len(detections) <= 2
    assert detections.boxes.shape == (len(detections), 4)
    assert list(detections.scores) == sorted(detections.scores, reverse=True)
    assert np.all(detections.boxes >= 0)
    assert np.all(detections.boxes[:, [0, 2]] <= W) and np.all(detections.boxes[:, [1, 3]] <= H)

    objects = permissive.track(clip, PHRASES)
    assert [o.object_id for o in objects] == list(range(1, len(detections) + 1))
    assert [o.label for o in objects] == detections.labels
    assert {o.label for o in objects} <= set(PHRASES)
    assert [o.score for o in objects] == pytest.approx(list(detections.scores))
    for obj in objects:
        assert obj.masks.shape == (T, H, W)
        assert obj.masks.dtype == bool


def test_nothing_found_is_an_empty_list(detector_dir: Path, clip: np.ndarray) -> None:
    tracker = Sam2Tracker(tiny_sam2_settings(box_threshold=1.0), str(detector_dir), None)
    assert tracker.track(clip, PHRASES) == []
    assert tracker.track(clip, []) == []
    assert tracker.track(clip, [" . "]) == []


def test_bad_frames_are_refused(permissive: Sam2Tracker, clip: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        permissive.track(clip.astype(np.float32), PHRASES)
    with pytest.raises(ValueError, match="uint8"):
        permissive.track(clip[:0], PHRASES)


def test_sam2_checkpoint_must_exist_or_match_its_hub_config(detector_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a file nor a SAM 2 hub id"):
        Sam2Tracker(tiny_sam2_settings(), str(detector_dir), "missing.pt")
    with pytest.raises(ValueError, match=r"sam2\.1_hiera_l\.yaml"):
        Sam2Tracker(tiny_sam2_settings(), str(detector_dir), "facebook/sam2.1-hiera-large")


@pytest.mark.parametrize(
    ("text_label", "phrase"),
    [
        ("coffee cup", "coffee cup"),
        ("cup", "coffee cup"),
        ("red square . coffee", "red square"),  # tokens spilling into the next phrase
        ("square . coffee cup", "coffee cup"),
        ("red square . coffee cup . [SEP]", "red square"),  # a tie goes to the first phrase
        ("[SEP]", None),
        ("", None),
    ],
)
def test_a_detection_grounds_the_phrase_it_shares_most_words_with(
    text_label: str, phrase: str | None
) -> None:
    assert _grounded_phrase(text_label, PHRASES, {"[SEP]", "[CLS]"}) == phrase


def test_duplicate_boxes_are_one_object() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    scores = np.array([0.5, 0.9, 0.7, 0.6])
    assert _distinct_best(boxes, scores, iou=0.8, limit=5) == [1, 2, 3]
    assert _distinct_best(boxes, scores, iou=0.8, limit=2) == [1, 2]
    assert _distinct_best(boxes, scores, iou=0.95, limit=5) == [1, 2, 3, 0]
    assert _distinct_best(boxes[:0], scores[:0], iou=0.8, limit=5) == []


@pytest.mark.parametrize(
    ("caption", "phrases"),
    [
        (
            "a red circle and a coffee cup moving over a photo of a cat",
            ["red circle", "coffee cup"],
        ),
        ("A dog running on the beach.", ["dog"]),
        (
            "the blue ball, a green star and an old wooden chair",
            ["blue ball", "green star", "old wooden chair"],
        ),
        ("a cup of coffee sliding across the table", ["cup of coffee"]),
        ("a red circle, moving left, and a red circle", ["red circle"]),
        ("moving over the table", []),
        ("", []),
    ],
)
def test_phrases_from_caption(caption: str, phrases: list[str]) -> None:
    assert phrases_from_caption(caption) == phrases
