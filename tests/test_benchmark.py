"""The benchmark: the demo suite's ground truth, running editors over a suite, the tables,
the sanity rule and the leakage check."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from viva_pipelines.definitions import build_definitions
from viva_pipelines.demo_world.dataset import scene_seed
from viva_pipelines.demo_world.suite import (
    SUITE_WORLD,
    SuiteGeometry,
    _scene,
    build_demo_suite,
    local_case_scenes,
    render_case,
)
from viva_pipelines.embedded.clip import build_tiny_clip
from viva_pipelines.evaluation import benchmark as bench
from viva_pipelines.evaluation.suite import (
    CATEGORIES,
    MANIFEST,
    leaked_instances,
    load_suite,
    training_video_hashes,
)
from viva_pipelines.model.clips import ClipGeometry
from viva_pipelines.rewards.clip_rewards import ClipScorer
from viva_pipelines.storage import Storage
from viva_pipelines.video.normalise import NormaliseSpec

REPO = Path(__file__).resolve().parents[1]
SMALL = SuiteGeometry(width=64, height=48, frames=12, fps=12)
SPEC = NormaliseSpec(width=32, height=32, fps=6, max_frames=5)
GEOMETRY = ClipGeometry(frames=3, frame_stride=2, height=16, width=16)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Storage, list]:
    storage = Storage(str(tmp_path_factory.mktemp("suite")))
    build_demo_suite(storage, per_category=1, geometry=SMALL)
    return storage, load_suite(storage, MANIFEST)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> ClipScorer:
    texts = ["a red circle moving over a photo of a cat", "a photo at night"]
    return ClipScorer(build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", texts))


# -- the demo suite ------------------------------------------------------------------------------


GLOBAL = {("tone", 0), ("style", 0), ("hybrid", 0)}  # hybrid 0: recolour + tone; 3: two local


@pytest.mark.parametrize(("category", "index"), [(c, 0) for c in CATEGORIES] + [("hybrid", 3)])
def test_demo_cases_change_only_inside_their_mask(category: str, index: int):
    case = render_case(category, index, geometry=SMALL)
    changed = np.any(case.source != case.target, axis=-1)
    assert changed.any(), "the edit must change something"
    assert not (changed & ~case.mask).any(), "pixels outside the edit mask must not change"
    if (category, index) in GLOBAL:
        assert case.mask.all()
    else:
        assert 0 < case.mask.mean() < 0.9
    assert (case.reference is not None) == category.startswith("ref_")
    assert case.source_caption != case.target_caption


@pytest.mark.parametrize("category", ["add", "ref_swap"])
def test_a_local_case_scenes_are_what_render_case_renders(category: str):
    """Diagnostics that draw an instance's scene again (bench/placement_bound.py) start from
    the very scenes the suite renders."""
    edit = local_case_scenes(category, 1, geometry=SMALL)
    case = render_case(category, 1, geometry=SMALL)
    source, (target, _), mask = edit.render()
    assert edit.instruction == case.instruction
    assert np.array_equal(source, case.source) and np.array_equal(target, case.target)
    assert np.array_equal(mask, case.mask)
    with pytest.raises(ValueError, match="'tone' is not a local edit"):
        local_case_scenes("tone", 0, geometry=SMALL)


def test_demo_suite_scenes_are_not_training_scenes():
    training = {scene_seed(0, index) for index in range(2000)}
    suite = {
        _scene(category, index, SUITE_WORLD, SMALL).seed
        for category in CATEGORIES
        for index in range(4)
    }
    assert len(suite) == 4 * len(CATEGORIES)
    assert not suite & training


def test_shipped_demo_manifest_is_what_the_renderer_writes():
    """assets/benchmarks/demo.jsonl pins the rendered suite: the first instance of each
    category re-rendered now says the same (instruction, captions, files)."""
    shipped = [
        json.loads(line)
        for line in (REPO / "assets/benchmarks/demo.jsonl").read_text().splitlines()
    ]
    assert len(shipped) == 4 * len(CATEGORIES)
    assert all(sum(r["category"] == c for r in shipped) == 4 for c in CATEGORIES)
    by_id = {row["id"]: row for row in shipped}
    for category in CATEGORIES:
        case = render_case(category, 0)
        row = by_id[f"{category}-01"]
        assert (row["instruction"], row["source_caption"], row["target_caption"]) == (
            case.instruction,
            case.source_caption,
            case.target_caption,
        )
        assert row["target_video"] and row["edit_mask"]
        assert (row["reference_image"] is not None) == category.startswith("ref_")


def test_demo_suite_loads_with_media_at_the_ingest_geometry(suite):
    storage, instances = suite
    assert [i.category for i in instances] == list(CATEGORIES)
    media = bench.load_media(storage, instances[0], SPEC)
    assert media.source.shape == media.target.shape == (5, 32, 32, 3)
    assert media.mask.shape == (5, 32, 32) and media.mask.dtype == bool
    assert 0 < media.mask.mean() < 1
    ref = next(i for i in instances if i.category == "ref_add")
    assert bench.load_media(storage, ref, SPEC).reference.ndim == 3


# -- running editors -----------------------------------------------------------------------------


class OracleEditor:
    """Returns the ground-truth target: perfect on the ground-truth metrics."""

    name = "oracle"
    geometry = GEOMETRY

    def edit(self, media, instance):
        return self.geometry.cut(media.target)


class BrokenEditor:
    name = "broken"
    geometry = GEOMETRY

    def edit(self, media, instance):
        raise RuntimeError("out of memory")


def test_run_benchmark_scores_every_pair_and_records_failures(suite, scorer, tmp_path):
    storage, instances = suite
    # One instance with a corrupt source video: its rows carry the reason, the rest run.
    broken_root = Storage(str(tmp_path))
    for instance in instances[:2]:
        for key in instance.paths():
            broken_root.write_bytes(key, storage.read_bytes(key))
    broken_root.write_bytes(instances[1].source_video, b"not a video")
    editors = [bench.IdentityEditor(GEOMETRY), OracleEditor(), BrokenEditor()]
    run = bench.run_benchmark(
        broken_root,
        instances[:2],
        editors,
        scorer,
        SPEC,
        keep_clips=lambda instance: instance.id == instances[0].id,
    )
    rows = run.rows.set_index(["id", "model"])
    first, second = instances[0].id, instances[1].id
    assert rows.loc[(first, "identity"), "bg_psnr"] == math.inf
    assert rows.loc[(first, "oracle"), "target_psnr"] == math.inf
    assert rows.loc[(first, "identity"), "target_psnr"] < 60
    # Inside the edit region the source is wrong by construction: lower than the whole frame.
    assert rows.loc[(first, "oracle"), "region_psnr"] == math.inf
    assert (
        rows.loc[(first, "identity"), "region_psnr"] < rows.loc[(first, "identity"), "target_psnr"]
    )
    assert "out of memory" in rows.loc[(first, "broken"), "error"]
    assert rows.loc[(first, "broken"), "status"] == "failed"
    assert rows.loc[(first, "identity"), "status"] == rows.loc[(first, "oracle"), "status"] == "ok"
    for model in ("identity", "oracle", "broken"):
        assert instances[1].source_video in rows.loc[(second, model), "error"]
        assert rows.loc[(second, model), "status"] == "failed"
    assert set(run.clips[first]) == {"source", "target", "identity", "oracle"}

    table = bench.category_table(run.rows)
    assert table.loc["average", ("identity", "bg_psnr")] == bench.PSNR_CAP
    keys = bench.write_report(broken_root, "out", run, table)
    written = broken_root.read_parquet(keys["table"])
    assert "identity/bg_psnr" in written.columns and written["category"].iloc[-1] == "average"
    assert "### oracle" in broken_root.read_bytes(keys["report"]).decode()
    assert broken_root.exists(f"out/previews/{first}.mp4")


# -- tables and sanity ---------------------------------------------------------------------------


def test_a_scoring_failure_is_a_one_line_failed_row(suite, scorer, monkeypatch):
    """An exception inside the scoring of one edit (not the edit itself) fails that row only."""
    storage, instances = suite
    real = bench.score_edit

    def score_edit(scorer_, instance, *args, **kwargs):
        if instance.id == instances[0].id:
            raise ValueError("metric blew up\nsecond line of a long message")
        return real(scorer_, instance, *args, **kwargs)

    monkeypatch.setattr(bench, "score_edit", score_edit)
    run = bench.run_benchmark(
        storage, instances[:3], [bench.IdentityEditor(GEOMETRY)], scorer, SPEC
    )
    rows = run.rows.set_index("id")
    assert rows.loc[instances[0].id, "status"] == "failed"
    assert rows.loc[instances[0].id, "error"] == (
        "ValueError: metric blew up second line of a long message"
    )
    for instance in instances[1:3]:
        assert rows.loc[instance.id, "status"] == "ok"
        assert rows.loc[instance.id, "bg_psnr"] == math.inf


def _rows(values: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"id": i, "category": c, "model": m, "clip_if": f, "bg_psnr": b, "error": None}
            for i, c, m, f, b in values
        ]
    )


def test_category_table_is_mean_per_category_then_mean_of_categories():
    rows = _rows(
        [
            ("s1", "swap", "sft", 0.1, 20.0),
            ("s2", "swap", "sft", 0.3, 30.0),
            ("c1", "color", "sft", 0.5, 40.0),
            ("s1", "swap", "identity", -0.1, math.inf),
            ("s2", "swap", "identity", -0.3, math.inf),
            ("c1", "color", "identity", -0.5, math.inf),
        ]
    )
    failed = {"id": "c2", "category": "color", "model": "sft", "error": "boom"}
    rows = pd.concat([rows, pd.DataFrame([failed])], ignore_index=True)
    table = bench.category_table(rows)
    assert list(table.index) == ["swap", "color", "average"]  # suite order, then the average
    assert table.loc["swap", ("sft", "clip_if")] == pytest.approx(0.2)
    assert table.loc["color", ("sft", "bg_psnr")] == pytest.approx(40.0)
    # Average of the category means (0.2, 0.5), not of the three instances.
    assert table.loc["average", ("sft", "clip_if")] == pytest.approx(0.35)
    assert table.loc["average", ("identity", "bg_psnr")] == bench.PSNR_CAP
    assert bench.sanity_problems(table) == []
    report = bench.markdown_report(table)
    assert "| sft | 0.35 | 32.5 |" in report
    assert "### identity" in report


def test_sanity_flags_identity_out_of_place():
    rows = _rows(
        [
            ("s1", "swap", "sft", -0.2, 50.0),
            ("s1", "swap", "identity", 0.1, 40.0),
        ]
    )
    problems = bench.sanity_problems(bench.category_table(rows))
    assert len(problems) == 2
    assert "not last on CLIP-IF: sft" in problems[0]
    assert "not first on BG PSNR: sft" in problems[1]


def test_judge_scores_take_precedence_in_the_sanity_rule():
    rows = _rows([("s1", "swap", "sft", -0.2, 20.0), ("s1", "swap", "identity", 0.1, 90.0)])
    rows["judge_instruction_following"] = [7.0, 1.0]
    assert bench.sanity_problems(bench.category_table(rows)) == []


# -- leakage -------------------------------------------------------------------------------------


def test_leakage_flags_a_suite_video_that_is_a_training_video(suite, tmp_path):
    media, instances = suite
    store = Storage(str(tmp_path))
    leaked_bytes = media.read_bytes(instances[0].source_video)
    val_bytes = media.read_bytes(instances[1].source_video)
    store.write_parquet(
        "raw_videos/shard-000000/manifest.parquet",
        pd.DataFrame(
            {
                "video_id": ["a", "b", "c"],
                "source_sha256": [
                    hashlib.sha256(x).hexdigest() for x in (leaked_bytes, val_bytes, b"other")
                ],
            }
        ),
    )
    qc_manifest = pd.DataFrame(
        {
            "video_id": ["a", "b", "c"],
            "split": ["train", "val", "train"],
            "modality": ["video", "video", "video"],
        }
    )
    hashes = training_video_hashes(store, qc_manifest)
    assert len(hashes) == 2  # a and c; b is validation
    assert leaked_instances(media, instances, hashes) == [instances[0].id]


# -- the Dagster assets --------------------------------------------------------------------------


def _materialize_suite(settings):
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        return job.execute_in_process(
            asset_selection=[dg.AssetKey("benchmark_suite")],
            instance=instance,
            raise_on_error=False,
        )


def test_benchmark_suite_asset_validates_and_blocks_on_leakage(suite, make_settings, tmp_path):
    media, instances = suite
    settings = make_settings(
        **{
            "storage.root": str(tmp_path / "root"),
            "benchmark.root": media.root_uri,
            "benchmark.manifest": None,
        }
    )
    result = _materialize_suite(settings)
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and "no qc_dataset yet" in check.metadata["result"].value
    store = Storage(settings.storage.root)
    assert len(store.read_parquet("benchmark_suite/instances.parquet")) == len(instances)

    # The first suite video is a training video: the blocking check fails, naming it.
    digest = hashlib.sha256(media.read_bytes(instances[0].source_video)).hexdigest()
    store.write_parquet(
        "raw_videos/shard-000000/manifest.parquet",
        pd.DataFrame({"video_id": ["v"], "source_sha256": [digest]}),
    )
    store.write_parquet(
        "qc_dataset/manifest.parquet",
        pd.DataFrame({"video_id": ["v"], "split": ["train"], "modality": ["video"]}),
    )
    (check,) = _materialize_suite(settings).get_asset_check_evaluations()
    assert not check.passed and instances[0].id in check.metadata["result"].value


def test_benchmark_suite_asset_names_the_bad_manifest_line(make_settings, tmp_path):
    root = Storage(str(tmp_path / "suite"))
    root.write_bytes("a.mp4", b"x")
    line = {
        "id": "a",
        "category": "zoom",
        "source_video": "a.mp4",
        "instruction": "i",
        "source_caption": "s",
        "target_caption": "t",
    }
    root.write_bytes("manifest.jsonl", (json.dumps(line) + "\n").encode())
    settings = make_settings(
        **{
            "storage.root": str(tmp_path / "root"),
            "benchmark.root": root.root_uri,
            "benchmark.manifest": None,
        }
    )
    result = _materialize_suite(settings)
    assert not result.success
    failure = result.failure_data_for_node("benchmark_suite")
    assert "manifest.jsonl line 1: unknown category 'zoom'" in failure.error.message
