"""The commands a user runs, as subprocesses with their own conf/ and Dagster home."""

import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_viva, write_conf
from viva_pipelines import cli
from viva_pipelines.defs.lineage import nodes_by_asset
from viva_pipelines.ingest.raw_videos import manifest_key
from viva_pipelines.pairs.shard import manifest_key as pairs_manifest_key
from viva_pipelines.pairs.shard import preview_key
from viva_pipelines.pairs.types import EDIT_TYPES
from viva_pipelines.storage import Storage
from viva_pipelines.video.io import read_video

VIVA = str(Path(sys.executable).parent / "viva")
run = run_viva


@pytest.mark.slow
def test_demo_data_then_ingest_materializes_every_shard_once(project: Path, tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    made = run(
        [
            "demo-data",
            "--videos",
            "5",
            "--seed",
            "3",
            "--width",
            "64",
            "--height",
            "48",
            "--frames",
            "12",
            "--suite-per-category",
            "1",
            "--image-pair-scenes",
            "1",
        ],
        project,
        home,
    )
    assert made.returncode == 0, made.stderr
    assert "demo benchmark suite (9 instances)" in made.stdout
    assert f"wrote {len(EDIT_TYPES)} image-editing pairs of 1 scenes to " in made.stdout
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
    # The demo's external image pairs (conf/base's qc.image_manifest) beside the videos' own.
    external = accepted[accepted["sample_id"].str.startswith("external-")]
    assert len(external) == len(EDIT_TYPES) and set(external["modality"]) == {"image"}

    second = run(["ingest"], project, home)
    assert second.returncode == 0, second.stderr
    assert "0 shards materialized, 1 already current" in second.stdout

    # Train (a few steps), register in MLflow, then edit with the registered model.
    write_conf(
        project,
        "local",
        "sft.yaml",
        {
            "sft": {
                "data": {"frames": 2, "height": 16, "width": 16},
                "optim": {"batch_size": 4, "max_steps": 4, "warmup_steps": 1},
                "eval": {"every": 4, "val_samples": 4, "sample_count": 2, "sample_steps": 2},
                "runtime": {"checkpoint_every": 4, "threads": 1},
            },
            "instructor": {"pretrain": {"steps": 3, "batch_size": 4, "corpus_scenes": 2}},
        },
    )
    trained = run(["materialize", "instructor_model", "sft_checkpoint"], project, home)
    assert trained.returncode == 0, trained.stdout + trained.stderr[-3000:]
    assert "instructor_model, sft_checkpoint materialized" in trained.stdout
    # Each asset's own time, in the order they ran (the instructor first: SFT reads it).
    assert re.search(r"\n  instructor_model \d+\.\ds, sft_checkpoint \d+\.\ds\n", trained.stdout)
    tracking = f"sqlite:///{project / 'data' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking)
    instructor = json.loads(storage.read_bytes("instructor_model/instructor.json"))
    assert instructor["trained"]["steps"] == 3 and instructor["location"].startswith(
        str(project / "data" / "instructor_model")
    )
    instructor_run = client.get_run(client.get_model_version("viva-instructor", "1").run_id)
    assert "val_position_accuracy" in instructor_run.data.metrics
    version = client.get_model_version("viva-sft", "1")
    mlflow_run = client.get_run(version.run_id)
    assert mlflow_run.data.tags["dagster.asset_key"] == "sft_checkpoint"
    assert "viva.upstream.qc_dataset.data_version" in mlflow_run.data.tags
    assert "viva.upstream.instructor_model.data_version" in mlflow_run.data.tags
    assert mlflow_run.data.params["model.instructor"] == instructor["location"]
    assert mlflow_run.data.params["optim.max_steps"] == "4"
    assert [d.dataset.name for d in mlflow_run.inputs.dataset_inputs] == ["qc_dataset"]
    assert "train_loss" in mlflow_run.data.metrics and "val_psnr" in mlflow_run.data.metrics
    out = project / "edited.mp4"
    edited = run(
        [
            "edit",
            "--model",
            "models:/viva-sft/1",
            "--video",
            str(next(source.glob("*.mp4"))),
            "--instruction",
            "Remove the red circle.",
            "--out",
            str(out),
            "--steps",
            "2",
        ],
        project,
        home,
    )
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert read_video(out)[0].shape == (12, 48, 64, 3)  # the source's frames and size
    assert "wrote " in edited.stdout and "12 frames of 64x48" in edited.stdout
    # The same model over a requests file, saved with a byte-order mark first as some Windows
    # editors do: one outcome line per request, kept beside the file; a bad line fails alone.
    requests = project / "requests.jsonl"
    lines = [
        {"video": str(next(source.glob("*.mp4"))), "instruction": "Remove it.", "out": "b1.mp4"},
        {"video": "missing.mp4", "instruction": "Remove it.", "out": "b2.mp4"},
    ]
    requests.write_text("\ufeff" + "".join(json.dumps(line) + "\n" for line in lines))
    batch = ["edit", "--model", "models:/viva-sft/1", "--batch", str(requests), "--steps", "2"]
    batched = run(batch, project, home)
    assert batched.returncode == 1, batched.stderr[-3000:]
    assert "1 edited, 1 failed" in batched.stdout
    assert read_video(project / "b1.mp4")[0].shape == (12, 48, 64, 3)
    outcomes = (project / "requests.results.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in outcomes] == ["ok", "failed"]
    assert "missing.mp4: no such file" in json.loads(outcomes[1])["reason"]

    # Reward models (tiny CLIP trained on the dataset) and Edit-GRPO over the SFT model.
    write_conf(
        project,
        "local",
        "grpo.yaml",
        {
            "rewards": {"tiny_clip_steps": 10},
            "grpo": {
                "sampling": {"group_size": 2, "num_steps": 3, "train_steps": 1},
                "optim": {"iterations": 2, "groups_per_iteration": 1},
                "eval": {"every": 2, "groups": 2},
                "runtime": {"checkpoint_every": 2},
            },
        },
    )
    tuned = run(["materialize", "reward_models", "grpo_lora"], project, home)
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr[-3000:]
    record = json.loads(storage.read_bytes("reward_models/models.json"))
    assert record["trained"]["train_pairs"] > 0 and record["clip"]["identity"]["sha256"]
    lora_version = client.get_model_version("viva-grpo-lora", "1")
    lora_run = client.get_run(lora_version.run_id)
    assert "viva.upstream.sft_checkpoint.data_version" in lora_run.data.tags
    assert "viva.upstream.reward_models.data_version" in lora_run.data.tags
    assert "eval/total" in lora_run.data.metrics and "kl" in lora_run.data.metrics
    assert lora_version.tags["viva.base_model"] == "viva-sft/1"
    assert "sha256" in lora_run.data.tags["viva.reward_model.clip"]
    with_lora = project / "edited_lora.mp4"
    edited = run(
        [
            "edit",
            "--model",
            "models:/viva-sft/1",
            "--lora",
            "models:/viva-grpo-lora/1",
            "--video",
            str(next(source.glob("*.mp4"))),
            "--instruction",
            "Remove it.",
            "--out",
            str(with_lora),
            "--steps",
            "2",
        ],
        project,
        home,
    )
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert read_video(with_lora)[0].shape == (12, 48, 64, 3)

    # The benchmark: the rendered one-per-category suite, every model, the report.
    write_conf(
        project, "local", "benchmark.yaml", {"benchmark": {"manifest": None, "num_steps": 2}}
    )
    scored = run(["materialize", "benchmark_suite", "benchmark_scores"], project, home)
    assert scored.returncode == 0, scored.stdout + scored.stderr[-3000:]
    assert "check no_training_video_in_suite: passed" in scored.stdout
    table = storage.read_parquet(
        next(key for key in storage.list("benchmark_scores") if key.endswith("table.parquet"))
    )
    assert table["category"].tolist()[-1] == "average" and len(table) == 10
    assert {"sft/clip_if", "grpo/clip_if", "identity/bg_psnr", "sft/target_psnr"} <= set(table)
    assert table["identity/bg_psnr"].iloc[-1] == 100.0  # identical background, capped
    scores_run = client.search_runs(
        [mlflow_run.info.experiment_id], "tags.`dagster.asset_key` = 'benchmark_scores'"
    )[0]
    assert "grpo/average/clip_if" in scores_run.data.metrics
    reported = run(["report"], project, home)
    assert reported.returncode == 0 and "### Averages over categories" in reported.stdout
    assert "| identity |" in reported.stdout and "failed edits: 0" in reported.stdout

    # Lineage: from the benchmark run back to the raw files, by checksum.
    audited = run(["lineage", "benchmark", "--json"], project, home)
    assert audited.returncode == 0, audited.stderr[-3000:]
    tree = json.loads(audited.stdout[audited.stdout.index("{") :])
    found = nodes_by_asset(tree)
    assert {
        "sft_checkpoint",
        "grpo_lora",
        "reward_models",
        "benchmark_suite",
        "qc_dataset",
        "instructor_model",
        "synthetic_pairs",
        "tracked_masks",
        "raw_videos",
    } <= set(found)
    assert found["sft_checkpoint"][0]["details"]["registered_model"] == "viva-sft/1"
    assert found["sft_checkpoint"][0]["details"]["git_commit"]
    videos = [v for node in found["raw_videos"] for v in node.get("details", {}).get("videos", [])]
    assert len(videos) == 5
    for video in videos:
        assert hashlib.sha256(Path(video["uri"]).read_bytes()).hexdigest() == video["sha256"]
    by_model = run(["lineage", "models:/viva-sft/1"], project, home)
    assert by_model.returncode == 0 and "raw_videos[shard-000000]" in by_model.stdout
    unknown = run(["lineage", "models:/viva-sft/99"], project, home)
    assert unknown.returncode == 2 and "not found in MLflow" in unknown.stderr

    # edited_videos: demo-data's requests plus three bad ones, edited by registered versions.
    requests = project / "data" / "edit_requests.jsonl"
    assert "wrote 3 demo edit requests" in made.stdout and requests.is_file()
    with requests.open("a") as handle:
        handle.write('{"video": "source_videos/gone.mp4", "instruction": "x", "out": "g.mp4"}\n')
        handle.write("{not json\n")
        handle.write('{"video": "../../etc/passwd", "instruction": "x", "out": "e.mp4"}\n')
    write_conf(
        project,
        "local",
        "inference.yaml",
        {
            "inference": {
                "model": "models:/viva-sft/1",
                "lora": "models:/viva-grpo-lora/1",
                "num_steps": 2,
            }
        },
    )
    inferred = run(["materialize", "edited_videos"], project, home)
    assert inferred.returncode == 0, inferred.stdout + inferred.stderr[-3000:]
    key = next(k for k in storage.list("edited_videos") if k.endswith("manifest.parquet"))
    outcomes = storage.read_parquet(key)
    assert outcomes["status"].tolist() == ["ok"] * 3 + ["failed"] * 3
    assert "gone.mp4: no such file" in outcomes["reason"][3]
    assert "not JSON" in outcomes["reason"][4] and "escapes its root" in outcomes["reason"][5]
    for row in outcomes.head(3).itertuples():
        assert read_video(row.uri)[0].shape == (12, 48, 64, 3)  # the source's frames and size
        assert Path(row.preview).is_file()
    audited = run(["lineage", "edited_videos", "--json"], project, home)
    assert audited.returncode == 0, audited.stderr[-3000:]
    found = nodes_by_asset(json.loads(audited.stdout[audited.stdout.index("{") :]))
    assert {"sft_checkpoint", "grpo_lora", "qc_dataset", "raw_videos"} <= set(found)
    assert found["sft_checkpoint"][0]["details"]["registered_model"] == "viva-sft/1"
    details = found["edited_videos"][0]["details"]
    assert details["model_uri"] == "models:/viva-sft/1"
    for video in details["videos"]:  # each output and its source, by checksum
        assert hashlib.sha256(Path(video["uri"]).read_bytes()).hexdigest() == video["sha256"]
        source_file = project / "data" / video["source"]
        assert hashlib.sha256(source_file.read_bytes()).hexdigest() == video["source_sha256"]
    assert len(details["videos"]) == 3

    missing = run(
        [
            "edit",
            "--model",
            str(project / "nope"),
            "--video",
            str(out),
            "--instruction",
            "x",
            "--out",
            str(project / "never.mp4"),
        ],
        project,
        home,
    )
    assert missing.returncode == 2 and "not a VIVA model directory" in missing.stderr
    exists = run(
        [
            "edit",
            "--model",
            str(project / "nope"),
            "--video",
            str(out),
            "--instruction",
            "x",
            "--out",
            str(out),
        ],
        project,
        home,
    )
    assert exists.returncode == 2 and "exists (pass --overwrite" in exists.stderr

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


def test_materialize_refuses_an_unknown_or_sharded_asset_before_any_run(
    monkeypatch, make_settings, capsys, tmp_path: Path
):
    """A typo in an asset name, or a per-shard asset, is one line naming it and what can be
    run, exit 2, and no run (it was a Dagster traceback, or a failed run)."""
    monkeypatch.setattr(cli, "get_settings", make_settings)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert cli.main(["materialize", "qc_dataset", "nosuch_asset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("viva materialize: no asset named nosuch_asset; assets: ")
    assert "qc_dataset" in err and "sft_checkpoint" in err and "tracked_masks" not in err
    assert cli.main(["materialize", "tracked_masks"]) == 2
    err = capsys.readouterr().err
    assert "tracked_masks: partitioned by shard" in err and "`viva ingest` materializes" in err
    assert not (tmp_path / "home").exists()  # no Dagster instance was opened


def test_a_step_that_fails_on_purpose_prints_its_reason_not_dagsters_stack(
    project: Path, tmp_path: Path
):
    """qc_dataset before any shard fails with a reason (dg.Failure); the terminal shows it on
    the step's and the run's failure lines, without the framework's stack around it."""
    failed = run(["materialize", "qc_dataset"], project, tmp_path / "home")
    assert failed.returncode == 1
    reason = "Reason: no shard has synthetic_pairs yet; materialize the shards first"
    assert "STEP_FAILURE" in failed.stderr and failed.stderr.count(reason) == 2
    assert "Stack Trace" not in failed.stderr and "File " not in failed.stderr
    assert "qc_dataset FAILED in" in failed.stdout


def test_only_a_deliberate_failure_loses_its_stack_trace():
    """A bug's error (any class but dg.Failure) keeps Dagster's full message with its stack."""
    from types import SimpleNamespace

    from viva_pipelines.defs.console import failure_reason

    def record(cls_name: str, message: str):
        error = SimpleNamespace(cls_name=cls_name, message=message)
        return SimpleNamespace(
            dagster_event=SimpleNamespace(event_specific_data=SimpleNamespace(error=error))
        )

    failure = record("Failure", "dagster._core.definitions.events.Failure: no shard: none\n")
    assert failure_reason(failure) == "no shard: none"
    retried = record("RetryRequestedFromPolicy", "Exceeded max_retries of 2\n")
    retried.dagster_event.event_specific_data.error.cause = (
        failure.dagster_event.event_specific_data.error
    )
    assert failure_reason(retried) == "no shard: none (exceeded max_retries of 2)"
    retried.dagster_event.event_specific_data.error.cause = SimpleNamespace(
        cls_name="OSError", message="OSError: disk full\n"
    )
    assert failure_reason(retried) is None  # a bug retried in vain keeps its stack
    assert failure_reason(record("KeyError", "KeyError: 'key'\n")) is None
    assert failure_reason(SimpleNamespace()) is None  # a plain log line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--videos", "0"], "demo.videos: Input should be greater than 0 (got 0)"),
        (["--width", "3"], "demo.width: must be even"),
        (["--fps", "0"], "demo.fps: Input should be greater than 0"),
        (["--image-pair-scenes", "-2"], "demo.image_pair_scenes: Input should be greater than"),
    ],
)
def test_demo_data_refuses_a_flag_its_setting_would_refuse_before_writing(
    project: Path, tmp_path: Path, monkeypatch, capsys, flags, message
):
    """`viva demo-data`'s flags are their demo.* settings, validated as the configuration:
    `--videos 0` rendered nothing and overwrote the demo's edit requests with none, `--fps 0`
    and `--width 0` silently meant the defaults, `--width 3` failed in the encoder."""
    monkeypatch.setenv("VIVA_CONF_DIR", str(project / "conf"))
    monkeypatch.delenv("VIVA_ENV", raising=False)
    out = tmp_path / "videos"
    assert cli.main(["demo-data", "--out", str(out), "--suite-per-category", "0", *flags]) == 2
    assert f"viva demo-data's flags: {message}" in capsys.readouterr().err
    assert not out.exists() and not (project / "data").exists()


def test_a_bad_config_is_one_clear_message_and_exit_code_2(project: Path, tmp_path: Path):
    write_conf(project, "base", "zz_typo.yaml", {"ingest": {"shard_sise": 3}})
    done = run(["config"], project, tmp_path)
    assert done.returncode == 2
    assert "conf/base/zz_typo.yaml: ingest.shard_sise: unknown key" in done.stderr
    assert "Traceback" not in done.stderr
