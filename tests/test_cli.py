"""The commands a user runs, as subprocesses with their own conf/ and Dagster home."""

import io
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_conf
from viva_pipelines.ingest.raw_videos import manifest_key
from viva_pipelines.pairs.shard import manifest_key as pairs_manifest_key
from viva_pipelines.pairs.shard import preview_key
from viva_pipelines.pairs.types import EDIT_TYPES
from viva_pipelines.storage import Storage

VIVA = str(Path(sys.executable).parent / "viva")


def run(args: list[str], project: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIVA_CONF_DIR": str(project / "conf"), "DAGSTER_HOME": str(home)}
    env.pop("VIVA_ENV", None)
    return subprocess.run([VIVA, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_demo_data_then_ingest_materializes_every_shard_once(project: Path, tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    made = run(["demo-data", "--videos", "5", "--seed", "3", "--width", "64", "--height", "48",
                "--frames", "12"], project, home)  # fmt: skip
    assert made.returncode == 0, made.stderr
    source = project / "data" / "source_videos"
    assert len(list(source.glob("*.mp4"))) == 5
    assert len(list(source.glob("*.masks.npz"))) == 5

    first = run(["ingest"], project, home)
    assert first.returncode == 0, first.stderr
    assert "5 videos in 1 shards (5 new)" in first.stdout
    assert "shard-000000: 5 videos ok, 0 rejected, " in first.stdout
    storage = Storage(str(project / "data"))
    manifest = storage.read_parquet(manifest_key("shard-000000"))
    assert (manifest["status"] == "ok").all() and manifest["annotations_key"].notna().all()
    pairs = storage.read_parquet(pairs_manifest_key("shard-000000"))
    assert set(pairs["edit_type"]) == set(EDIT_TYPES)
    preview = np.asarray(Image.open(io.BytesIO(storage.read_bytes(preview_key("shard-000000")))))
    assert preview.shape[0] == 96 * len(EDIT_TYPES)  # one row of key frames per edit type

    built = run(["materialize", "qc_dataset"], project, home)
    assert built.returncode == 0, built.stdout + built.stderr
    for check in (
        "train_split_non_empty",
        "every_edit_type_present",
        "no_video_in_two_splits",
        "referenced_files_exist",
    ):
        assert f"check {check}: passed" in built.stdout
    dataset = storage.read_parquet("qc_dataset/manifest.parquet")
    accepted = dataset[dataset["status"] == "accepted"]
    assert set(accepted["modality"]) == {"video", "image"}

    second = run(["ingest"], project, home)
    assert second.returncode == 0, second.stderr
    assert "0 shards materialized, 1 already current" in second.stdout

    os.environ["DAGSTER_HOME"], previous = str(home), os.environ.get("DAGSTER_HOME")
    try:
        with dg.DagsterInstance.get() as instance:
            assert instance.get_dynamic_partitions("video_shards") == ["shard-000000"]
            for asset in ("raw_videos", "tracked_masks", "synthetic_pairs"):
                event = instance.get_latest_materialization_event(dg.AssetKey(asset))
                assert event.asset_materialization.partition == "shard-000000"
            assert instance.get_latest_materialization_event(dg.AssetKey("qc_dataset"))
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = previous


def test_a_bad_config_is_one_clear_message_and_exit_code_2(project: Path, tmp_path: Path):
    write_conf(project, "base", "zz_typo.yaml", {"ingest": {"shard_sise": 3}})
    done = run(["config"], project, tmp_path)
    assert done.returncode == 2
    assert "conf/base/zz_typo.yaml: ingest.shard_sise: unknown key" in done.stderr
    assert "Traceback" not in done.stderr
