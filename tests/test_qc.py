import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from viva_pipelines.config.schema import QcSettings, QcThresholdsSettings, VlmSettings
from viva_pipelines.qc import checks
from viva_pipelines.qc.dataset import (
    ACCEPTED,
    REJECTED,
    build_qc_dataset,
    split_of,
)
from viva_pipelines.qc.rules import dilate, pair_metrics, qc_rejection
from viva_pipelines.storage import Storage
from viva_pipelines.vlm.review import PairVerdict


def clip(t=4, h=20, w=20, value=100) -> np.ndarray:
    return np.full((t, h, w, 3), value, np.uint8)


def square_mask(t=4, h=20, w=20) -> np.ndarray:
    mask = np.zeros((t, h, w), bool)
    mask[:, 5:10, 5:10] = True
    return mask


def test_metrics_by_hand():
    source, mask = clip(), square_mask()
    target = source.copy()
    target[mask] = 160  # +60 inside
    target[:, 0, 0] = 130  # +30 at one pixel far outside
    m = pair_metrics(source, target, mask, dilation=1)
    assert m["inside_change"] == 60
    outside_pixels = 4 * (400 - 49)  # the 5x5 square dilated by 1 is 7x7
    assert m["outside_change"] == pytest.approx(4 * 30 / outside_pixels)
    assert m["total_change"] == pytest.approx((4 * 25 * 60 + 4 * 30) / (4 * 400))
    assert m["mask_fraction"] == pytest.approx(25 / 400)
    assert m["mask_stability"] == 1.0
    assert dilate(mask, 1)[0].sum() == 49


def _metrics(source, target, mask):
    return pair_metrics(source, target, mask)


@pytest.mark.parametrize(
    ("name", "edit_type", "make", "words"),
    [
        ("identical target", "remove", lambda s, m: s.copy(), "identical"),
        ("empty mask", "remove", lambda s, m: s + 50, "empty"),
        ("change outside the mask", "color", lambda s, m: s + 40, "outside"),
        (
            "nothing inside changes",
            "color",
            lambda s, m: np.where(m[..., None], s, s + 0) + 0,
            "identical",
        ),
    ],
)
def test_planted_bad_pairs_are_rejected(name, edit_type, make, words):
    source, mask = clip(), square_mask()
    if name == "empty mask":
        mask = np.zeros_like(mask)
    target = make(source, mask).astype(np.uint8)
    reason = qc_rejection(_metrics(source, target, mask), edit_type, QcThresholdsSettings())
    assert reason is not None and words in reason, (name, reason)


def test_a_clean_local_edit_passes_and_global_edits_skip_mask_rules():
    source, mask = clip(), square_mask()
    target = source.copy()
    target[mask] = 200
    assert qc_rejection(_metrics(source, target, mask), "color", QcThresholdsSettings()) is None
    everywhere = np.ones_like(mask)
    styled = (source * 0.5).astype(np.uint8)
    assert (
        qc_rejection(_metrics(source, styled, everywhere), "style", QcThresholdsSettings()) is None
    )
    assert (
        qc_rejection(_metrics(source, styled, everywhere), "hybrid", QcThresholdsSettings()) is None
    )
    most = everywhere.copy()
    most[:, :2] = False  # 90 % of the frame: still a local edit, and far too large for one
    assert "too large" in qc_rejection(
        _metrics(source, styled, most), "color", QcThresholdsSettings()
    )


def test_frame_count_mismatch_is_rejected():
    metrics = _metrics(clip(), clip(value=150), square_mask())
    metrics["frames_target"] = 3
    assert "frame counts differ" in qc_rejection(metrics, "remove", QcThresholdsSettings())


def test_split_is_deterministic_by_video_and_near_the_requested_fraction():
    ids = [f"video-{i}" for i in range(2000)]
    splits = [split_of(v, 0.2, seed=0) for v in ids]
    assert splits == [split_of(v, 0.2, seed=0) for v in ids]
    assert 0.17 < splits.count("val") / len(ids) < 0.23
    assert splits != [split_of(v, 0.2, seed=1) for v in ids]


def pair_rows(storage: Storage) -> pd.DataFrame:
    """Two videos x two edit types, as synthetic_pairs writes them (files included)."""
    rows = []
    for video in ("va", "vb"):
        for edit_type, inside, outside in (("remove", 40.0, 0.5), ("color", 30.0, 9.0)):
            pair_id = f"{video}-{edit_type}-0"
            keys = {
                name: f"synthetic_pairs/shard-000000/{pair_id}/{name}"
                for name in (
                    "target.mp4",
                    "mask.npz",
                    "key_source.png",
                    "key_target.png",
                    "key_mask.png",
                )
            }
            for key in keys.values():
                storage.write_bytes(key, b"x")
            storage.write_bytes(f"raw_videos/shard-000000/{video}.mp4", b"x")
            rows.append(
                {
                    "pair_id": pair_id,
                    "video_id": video,
                    "shard": "shard-000000",
                    "edit_type": edit_type,
                    "status": "ok",
                    "reason": None,
                    "instruction": f"{edit_type} it",
                    "source_caption": "a",
                    "target_caption": "b",
                    "source_key": f"raw_videos/shard-000000/{video}.mp4",
                    "target_key": keys["target.mp4"],
                    "mask_key": keys["mask.npz"],
                    "reference_key": None,
                    "key_source": keys["key_source.png"],
                    "key_target": keys["key_target.png"],
                    "key_mask": keys["key_mask.png"],
                    "key_frame": 2,
                    "fps": 8.0,
                    "backend": "opencv",
                    "params": "{}",
                    "frames_source": 17,
                    "frames_target": 17,
                    "mask_fraction": 0.05,
                    "mask_stability": 0.8,
                    "inside_change": inside,
                    "outside_change": outside,
                    "total_change": 2.0,
                }
            )
    rows.append(
        {
            **rows[0],
            "pair_id": "vc-failed",
            "video_id": "vc",
            "status": "failed",
            "reason": "ValueError: broken",
        }
    )
    return pd.DataFrame(rows)


def test_qc_dataset_filters_splits_and_cuts_image_pairs(tmp_path):
    storage = Storage(str(tmp_path))
    config = QcSettings(val_fraction=0.5)
    result = build_qc_dataset(storage, [pair_rows(storage)], config)
    m = result.manifest.set_index("sample_id")
    assert m.loc["va-remove-0", "status"] == ACCEPTED
    assert m.loc["va-color-0", "status"] == REJECTED
    assert "outside" in m.loc["va-color-0", "reason"]
    assert m.loc["vc-failed", "reason"] == "generation failed: ValueError: broken"
    image = m.loc["va-remove-0-image"]
    assert image["modality"] == "image" and image["source_key"].endswith("key_source.png")
    assert image["split"] == m.loc["va-remove-0", "split"]
    assert "va-color-0-image" not in m.index  # no image pair from a rejected video pair
    assert storage.read_parquet("qc_dataset/manifest.parquet").equals(result.manifest)
    assert result.summary().loc["remove"].sum() == 4  # 2 videos x (video + image)
    assert result.rejection_reasons().index[0].startswith("changes outside the edit region")

    looser = QcSettings(thresholds=QcThresholdsSettings(max_outside_change=10.0))
    assert (
        build_qc_dataset(storage, [pair_rows(storage)], looser).data_version != result.data_version
    )


def test_reviewer_can_rewrite_reject_or_fail_without_stopping_the_run(tmp_path):
    storage = Storage(str(tmp_path))

    def reviewer(pair):
        if pair.video_id == "va":
            return PairVerdict(keep=True, score=9, instruction="Erase the square.", reason="fine")
        raise TimeoutError("endpoint timed out twice")

    result = build_qc_dataset(storage, [pair_rows(storage)], QcSettings(), reviewer=reviewer)
    m = result.manifest.set_index("sample_id")
    assert m.loc["va-remove-0", "instruction"] == "Erase the square."
    assert m.loc["va-remove-0", "original_instruction"] == "remove it"
    assert m.loc["va-remove-0", "vlm_score"] == 9
    assert m.loc["vb-remove-0", "status"] == REJECTED
    assert m.loc["vb-remove-0", "reason"] == "vlm review failed: endpoint timed out twice"

    def strict(pair):
        keep = pair.video_id == "va"
        return PairVerdict(keep=keep, score=4, instruction="Remove it.", reason="blurry target")

    rejected = build_qc_dataset(storage, [pair_rows(storage)], QcSettings(), reviewer=strict)
    assert set(rejected.manifest["reason"].dropna()) >= {"vlm rejected: blurry target"}
    picky = build_qc_dataset(
        storage, [pair_rows(storage)], QcSettings(vlm=VlmSettings(min_score=5)), reviewer=strict
    )
    reasons = picky.manifest.set_index("sample_id")["reason"]
    assert reasons["va-remove-0"] == "vlm score too low (4 < 5): blurry target"


def test_checks_pass_on_a_good_dataset_and_fail_on_planted_faults(tmp_path):
    storage = Storage(str(tmp_path))
    result = build_qc_dataset(storage, [pair_rows(storage)], QcSettings(val_fraction=0.0))
    m = result.manifest
    assert checks.train_split_non_empty(m)[0]
    assert checks.edit_types_present(m, ["remove"])[0]
    assert not checks.edit_types_present(m, ["remove", "color"])[0]  # color was rejected
    assert checks.no_video_in_two_splits(m)[0]
    assert checks.referenced_files_exist(storage, m)[0]

    leaked = m.copy()
    leaked.loc[leaked["sample_id"] == "va-remove-0-image", "split"] = "val"
    assert not checks.no_video_in_two_splits(leaked)[0]
    storage.delete("synthetic_pairs/shard-000000/va-remove-0/target.mp4")
    ok, text = checks.referenced_files_exist(storage, m)
    assert not ok and "va-remove-0/target.mp4" in text
    all_val = build_qc_dataset(storage, [pair_rows(storage)], QcSettings(val_fraction=0.9999))
    assert not checks.train_split_non_empty(all_val.manifest)[0]


def test_external_image_pairs_are_validated_copied_and_split(tmp_path):
    import json

    from viva_pipelines.qc.checks import referenced_files_exist
    from viva_pipelines.qc.external import external_image_rows

    folder = tmp_path / "external"
    (folder / "img").mkdir(parents=True)
    pictures = {}
    for level, name in enumerate(("a_src.png", "a_tgt.png", "b_src.png", "b_tgt.png")):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40 * level, np.uint8)).save(buffer, format="PNG")
        pictures[name] = buffer.getvalue()
        (folder / "img" / name).write_bytes(pictures[name])
    (tmp_path / "secret.png").write_bytes(b"outside")
    lines = [
        {
            "id": "a",
            "source": "img/a_src.png",
            "target": "img/a_tgt.png",
            "instruction": "Make it red.",
        },
        {
            "id": "b/1",
            "source": "img/b_src.png",
            "target": "img/b_tgt.png",
            "instruction": "Add a hat.",
            "edit_type": "add",
        },
        {"id": "c", "source": "img/missing.png", "target": "img/a_tgt.png", "instruction": "x"},
        {"id": "d", "source": "../secret.png", "target": "img/a_tgt.png", "instruction": "x"},
        {"id": "e", "source": "img/a_src.png", "instruction": "no target"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    (folder / "pairs.jsonl").write_text(text)
    storage = Storage(str(tmp_path / "root"))
    rows = external_image_rows(storage, str(folder / "pairs.jsonl"), val_fraction=0.2, split_seed=0)
    by_id = {row["sample_id"]: row for row in rows}
    assert by_id["external-a"]["status"] == ACCEPTED
    assert storage.read_bytes(by_id["external-a"]["source_key"]) == pictures["a_src.png"]
    assert by_id["external-b_1"]["edit_type"] == "add"
    assert "missing" in by_id["external-c"]["reason"]
    assert "leaves the manifest's folder" in by_id["external-d"]["reason"]
    assert "line 5: missing target" in by_id["external-line-5"]["reason"]
    assert "line 6: not valid JSON" in by_id["external-line-6"]["reason"]
    result = build_qc_dataset(storage, [pair_rows(storage)], QcSettings(), extra_rows=rows)
    external = result.manifest[result.manifest["sample_id"].str.startswith("external-")]
    assert (external["modality"] == "image").all() and len(external) == 6
    assert referenced_files_exist(storage, result.manifest)[0]
