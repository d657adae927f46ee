"""Fault tolerance, nothing lost: one test per fault. (A trainer killed mid-run and retried,
resuming to the weights of an uninterrupted run: tests/test_crash_recovery.py.)

1. Two runs materialize the same shard at once: no corruption, no temp files left.
2. S3 goes away during a shard's writes and comes back: no partial object is ever visible,
   the retried shard completes.
3. MLflow server down when a training asset starts: one clear error naming the URI, fast,
   before any training process is launched.
4. A VLM endpoint that times out or answers garbage: bounded attempts, the failure recorded
   (QC review and benchmark judge).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from tests import chat_server
from viva_pipelines.storage import Storage

REPO = Path(__file__).resolve().parent.parent


# -- 1 and 2: shard writes under contention and with S3 going away ----------------------------

SPEC = {"ingest.width": 32, "ingest.height": 32, "ingest.fps": 5, "ingest.max_frames": 9}
SHARD = "shard-000000"


def _source_videos(folder: Path, count: int = 3) -> None:
    from tests import video_fixtures as vf
    from tests.test_ingest import _annotated_video

    folder.mkdir(parents=True, exist_ok=True)
    _annotated_video(folder / "annotated.mp4")
    for i in range(count - 1):
        vf.good_video(folder / f"plain{i}.mp4", frames=12, size=(48, 32), fps=10)


def _register(defs, settings) -> list[str]:
    from viva_pipelines.ingest.shards import scan_and_register, shard_members

    registry, _ = scan_and_register(
        defs.resources["storage"].get(),
        defs.resources["video_source"].get(),
        [".mp4"],
        settings.ingest.shard_size,
    )
    return sorted(shard_members(registry, SHARD)["video_id"])


def _assert_shard_complete(storage: Storage, members: list[str]) -> None:
    """Every manifest of the shard reads back, lists every member once and only references
    files that exist and are whole (videos decode, masks load)."""
    from viva_pipelines.ingest import raw_videos as ingest
    from viva_pipelines.masks import shard as masks
    from viva_pipelines.masks.shard import load_mask
    from viva_pipelines.pairs import shard as pairs
    from viva_pipelines.video.io import read_video

    raw = storage.read_parquet(ingest.manifest_key(SHARD))
    assert sorted(raw["video_id"]) == members  # each member exactly once
    assert set(raw["status"]) == {ingest.OK}, raw[["video_id", "reason"]]
    for row in raw.itertuples():
        with storage.local_path(row.video_key) as local:
            assert len(read_video(local)[0]) == row.frames
        for key in (row.annotations_key, row.masks_key):
            assert key is None or key is pd.NA or storage.exists(key)
    if storage.exists(masks.manifest_key(SHARD)):
        tracks = storage.read_parquet(masks.manifest_key(SHARD))
        assert set(tracks["video_id"]) == set(members)
        for key in tracks["mask_key"].dropna():
            assert load_mask(storage, key).ndim == 3
    if storage.exists(pairs.manifest_key(SHARD)):
        made = storage.read_parquet(pairs.manifest_key(SHARD))
        assert made["pair_id"].is_unique and (made["status"] == "ok").any()
        for column in ("source_key", "target_key", "mask_key"):
            for key in made.loc[made["status"] == "ok", column].dropna():
                assert storage.exists(key), key


def _temp_files(root: Path) -> list[Path]:
    from viva_pipelines.storage import TEMP_SUFFIX

    return [p for p in root.rglob("*") if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)]


def _materialize_shard(settings, instance_ref) -> dict:
    """One Dagster run of the shard job, in a process of its own (spawned), on the shared
    instance; what the parent asserts on."""
    import dagster as dg

    from viva_pipelines.definitions import build_definitions
    from viva_pipelines.defs.jobs import SHARD_JOB

    job = build_definitions(settings).resolve_job_def(SHARD_JOB)
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        result = job.execute_in_process(
            partition_key=SHARD, instance=instance, raise_on_error=False
        )
    versions = (
        [
            e.tags.get("dagster/data_version")
            for e in result.asset_materializations_for_node("raw_videos")
        ]
        if result.success
        else []
    )
    return {
        "success": result.success,
        "run_id": result.run_id,
        "raw_versions": versions,
        "failures": [e.message for e in result.all_events if e.is_failure],
    }


@pytest.mark.slow
def test_two_runs_materializing_the_same_shard_at_once_corrupt_nothing(make_settings, tmp_path):
    """Two processes (as two run workers would be), two Dagster runs, one instance and one
    storage root, the same partition at the same time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import dagster as dg

    from viva_pipelines.definitions import build_definitions

    _source_videos(tmp_path / "source")
    settings = make_settings(
        **SPEC,
        **{
            "storage.root": str(tmp_path / "root"),
            "sources.raw_videos.uri": str(tmp_path / "source"),
            "mlflow.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        },
    )
    members = _register(build_definitions(settings), settings)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions("video_shards", [SHARD])
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=spawn) as pool:
            futures = [
                pool.submit(_materialize_shard, settings, instance.get_ref()) for _ in range(2)
            ]
            results = [f.result(timeout=400) for f in futures]
        # Both runs succeed: every write is atomic and both compute the same content.
        assert [r["success"] for r in results] == [True, True], results
        assert len({r["run_id"] for r in results}) == 2
        assert {v for r in results for v in r["raw_versions"]} == {
            instance.get_latest_materialization_event(
                dg.AssetKey("raw_videos")
            ).asset_materialization.tags["dagster/data_version"]
        }  # the same shard content, whoever wrote last
    storage = Storage(settings.storage.root)
    _assert_shard_complete(storage, members)
    assert _temp_files(tmp_path / "root") == []


class _S3Outage:
    """Wraps s3fs's one S3 entry point (``_call_s3``): from the ``down_at``-th write on, every
    call (read or write) fails as an unreachable endpoint does, until :meth:`recover` or, for
    a blip, after ``max_refused`` refused calls. Before every write it lets
    ``reader(write_number)`` look at the bucket as another client would."""

    WRITES = frozenset(
        {
            "put_object",
            "create_multipart_upload",
            "upload_part",
            "complete_multipart_upload",
            "delete_object",
            "delete_objects",
            "copy_object",
        }
    )

    def __init__(self, endpoint: str, down_at: int, reader, max_refused: int | None) -> None:
        self.endpoint, self.down_at, self.reader = endpoint, down_at, reader
        self.max_refused = max_refused
        self.writes = self.refused = 0
        self.down = False
        self.armed = False

    def install(self, monkeypatch) -> None:
        import s3fs
        from botocore.exceptions import EndpointConnectionError

        original = s3fs.S3FileSystem._call_s3
        outage = self

        async def call_s3(fs, method, *args, **kwargs):
            if outage.armed and method in outage.WRITES:
                outage.writes += 1
                outage.reader(outage.writes)
                if outage.writes == outage.down_at:
                    outage.down = True
            if outage.down:
                outage.refused += 1
                if outage.refused == outage.max_refused:
                    outage.down = False
                raise EndpointConnectionError(endpoint_url=outage.endpoint)
            return await original(fs, method, *args, **kwargs)

        monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call_s3)

    def recover(self) -> None:
        self.down = False


@pytest.mark.slow
@pytest.mark.parametrize("blip", [False, True], ids=["down-until-retry", "one-refused-write"])
def test_s3_going_away_mid_shard_shows_no_partial_object_and_the_retry_completes(
    make_settings, s3_endpoint, s3_bucket, tmp_path, monkeypatch, blip
):
    """S3 stops answering at the shard's second write. ``down-until-retry``: it is back when
    Dagster retries the step. ``one-refused-write``: only that one write fails (a blip), which
    must still fail the step rather than record the video as rejected."""
    import io

    import boto3
    import dagster as dg

    from viva_pipelines.definitions import build_definitions
    from viva_pipelines.defs import ingest as ingest_defs
    from viva_pipelines.defs.jobs import SHARD_JOB
    from viva_pipelines.ingest import raw_videos as ingest
    from viva_pipelines.video.io import read_video

    source = tmp_path / "source"
    _source_videos(source, count=2)
    settings = make_settings(
        **SPEC,
        **{
            "storage.root": f"s3://{s3_bucket}/pipeline",
            "storage.s3.endpoint_url": s3_endpoint,
            "sources.raw_videos.uri": str(source),
            "mlflow.tracking_uri": f"sqlite:///{tmp_path}/m.db",
            "execution.retry.max_retries": 2,
            "execution.retry.delay_s": 0.2,
        },
    )
    defs = build_definitions(settings)
    storage = defs.resources["storage"].get()
    job = defs.resolve_job_def(SHARD_JOB)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    prefix = f"pipeline/{ingest.shard_prefix(SHARD)}/"

    def objects() -> dict[str, bytes]:
        listed = client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix).get("Contents", [])
        return {
            o["Key"]: client.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
            for o in listed
        }

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("video_shards", [SHARD])
        _register(defs, settings)
        first = job.execute_in_process(
            partition_key=SHARD, instance=instance, asset_selection=[dg.AssetKey("raw_videos")]
        )
        assert first.success
        old = objects()
        manifest = f"pipeline/{ingest.manifest_key(SHARD)}"
        assert len(pd.read_parquet(io.BytesIO(old[manifest]))) == 2

        # A third video arrives; the shard's next run rewrites it while S3 goes away.
        from tests import video_fixtures as vf

        vf.good_video(source / "late.mp4", frames=12, size=(48, 32), fps=10)
        members = _register(defs, settings)
        assert len(members) == 3
        views: list[tuple[int, dict[str, bytes]]] = []

        def reader(write_number: int) -> None:
            views.append((write_number, objects()))

        outage = _S3Outage(s3_endpoint, 2, reader, max_refused=1 if blip else None)
        outage.install(monkeypatch)
        attempts = []
        load_registry = ingest_defs.load_registry

        def load_registry_and_count(store):
            attempts.append(outage.down)
            if len(attempts) > 1:
                outage.recover()  # S3 is back by the time the step is retried
            return load_registry(store)

        monkeypatch.setattr(ingest_defs, "load_registry", load_registry_and_count)
        outage.armed = True
        second = job.execute_in_process(
            partition_key=SHARD,
            instance=instance,
            asset_selection=[dg.AssetKey("raw_videos")],
            raise_on_error=False,
        )
        outage.armed = False
        events = [e.event_type_value for e in second.all_events]
        assert second.success, [e.message for e in second.all_events if e.is_failure]
        # Failed once, then retried (a blip is over before the retry starts).
        assert attempts == [False, not blip]
        assert outage.refused == 1 if blip else outage.refused >= 1
        assert "STEP_UP_FOR_RETRY" in events and "STEP_RESTARTED" in events
        failure = next(e for e in second.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")
        assert "StorageWriteError" in str(failure.event_specific_data)
        assert "Could not connect to the endpoint URL" in str(failure.event_specific_data)

    # What any other client saw before each write: every object either the old one, byte for
    # byte, or a new object that is whole; the manifest always the old complete one until the
    # retried run replaced it.
    final = objects()
    assert views and any(number >= outage.down_at for number, _ in views)
    for _, view in [*views, (0, final)]:
        table = pd.read_parquet(io.BytesIO(view[manifest]))
        assert len(table) in (2, 3)
        for key, data in view.items():
            if key in old and data == old[key]:
                continue
            if key.endswith(".mp4"):
                local = tmp_path / "check.mp4"
                local.write_bytes(data)
                assert len(read_video(local)[0]) > 0, key
            elif key.endswith(".parquet"):
                assert len(pd.read_parquet(io.BytesIO(data))) == 3, key
            elif key.endswith(".json"):
                json.loads(data)
            elif key.endswith(".npz"):
                import numpy as np

                assert len(np.load(io.BytesIO(data)).files) > 0, key
        for key in table["video_key"].dropna():
            assert f"pipeline/{key}" in view, key  # a manifest only names files that exist
    _assert_shard_complete(storage, members)
    assert len(pd.read_parquet(io.BytesIO(final[manifest]))) == 3


# -- 3: the MLflow server is down when a training asset starts --------------------------------


def _closed_loopback_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: connections are refused


def test_mlflow_down_fails_sft_checkpoint_fast_naming_the_uri_before_training(
    make_settings, tmp_path, run_sft_checkpoint
):
    uri = f"http://127.0.0.1:{_closed_loopback_port()}"
    settings = make_settings(
        **{
            "storage.root": str(tmp_path / "root"),
            "mlflow.tracking_uri": uri,
            "execution.retry.max_retries": 0,
        }
    )
    result, launched, elapsed = run_sft_checkpoint(settings)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.step_failure_data.error
    text = error.message + "".join(str(c.message) for c in (error.cause, error.context) if c)
    assert f"MLflow tracking server at {uri} is not reachable" in text, text
    assert elapsed < 20, elapsed  # no retry storm: one short probe
    assert launched == []  # no training process was started


def test_mlflow_down_the_commands_that_read_it_answer_in_seconds_naming_the_server(
    project, tmp_path
):
    """`viva edit --model models:/…` and `viva lineage` waited minutes on MLflow's retries
    (`viva lineage` once per run of the tree) before a stack trace or a "not found"."""
    from tests.conftest import run_viva, write_conf
    from tests.video_fixtures import good_video

    uri = f"http://127.0.0.1:{_closed_loopback_port()}"
    write_conf(project, "base", "mlflow.yaml", {"mlflow": {"tracking_uri": uri}})
    video = good_video(tmp_path / "in.mp4")
    down = f"MLflow tracking server at {uri} is not reachable"

    def viva(*args: str):
        started = time.monotonic()
        done = run_viva(list(args), project, tmp_path / "home")
        assert time.monotonic() - started < 30, (args, done.stderr)
        return done

    edit = viva(
        *("edit", "--model", "models:/viva-sft/1", "--video", str(video)),
        *("--instruction", "Remove the ball.", "--out", str(tmp_path / "out.mp4")),
    )
    assert edit.returncode == 2, edit.stderr
    assert f"viva edit: models:/viva-sft/1: cannot fetch the model: {down}" in edit.stderr
    assert "Traceback" not in edit.stderr
    by_model = viva("lineage", "models:/viva-sft/1")
    assert by_model.returncode == 2 and down in by_model.stderr, by_model.stderr
    assert "models:/viva-sft/1: names an MLflow run or model, and MLflow cannot be reached" in (
        by_model.stderr
    )
    by_asset = viva("lineage", "qc_dataset")  # answered from Dagster alone
    assert by_asset.returncode == 2, by_asset.stderr
    assert down in by_asset.stderr and "qc_dataset has not been materialized" in by_asset.stderr


def test_an_object_store_root_that_cannot_be_used_stops_ingest_and_materialize_in_one_line(
    project, tmp_path
):
    """A dead S3 endpoint was a 150-line stack trace from the first registry read."""
    from tests.conftest import run_viva, write_conf

    endpoint = f"http://127.0.0.1:{_closed_loopback_port()}"
    write_conf(
        project,
        "base",
        "storage.yaml",
        {
            "storage": {"root": "s3://viva-bucket/demo", "s3": {"endpoint_url": endpoint}},
            "sources": {"raw_videos": {"uri": str(tmp_path / "videos")}},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        },
    )
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    for command in (["ingest"], ["materialize", "qc_dataset"]):
        done = run_viva(command, project, tmp_path / "home", env=credentials)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(
            f"viva {command[0]}: storage s3://viva-bucket/demo cannot be used: Could not connect"
            f' to the endpoint URL: "{endpoint}/viva-bucket?'
        ), done.stderr
    assert not (tmp_path / "home").exists()  # refused before any Dagster run


def test_an_answering_tracking_server_is_reachable_whatever_it_answers(monkeypatch):
    """Any HTTP answer (here 404 from a plain web server) counts as reachable; a server
    that accepts but never answers fails after the probe's timeout."""
    import http.server
    import socket
    import threading

    from viva_pipelines.tracking import TrackingServerUnreachable, check_reachable

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_reachable(f"http://127.0.0.1:{server.server_address[1]}")  # 501: it answered
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(TrackingServerUnreachable, match="is not reachable: timed out"):
            check_reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)
        assert time.monotonic() - started < 5
    check_reachable("sqlite:///nowhere/mlflow.db")  # local stores are not probed


# -- 4: a VLM endpoint that times out or answers garbage --------------------------------------
# Retries, 5xx, one timeout, garbage and recorded failures of each piece are covered in
# tests/test_vlm.py, tests/test_qc.py and tests/test_eval_judge.py; what was missing is an
# endpoint that never answers in time (and one that only answers garbage), through the real
# client, into the QC manifest and the judge's result.


@pytest.mark.parametrize(
    ("reply", "requests", "words"),
    [
        (chat_server.Reply("{}", delay_s=1.0), 3, ("timed out", "after 3 attempt(s)")),
        (chat_server.Reply("The edit looks great, 9/10."), 2, ("after one corrective retry",)),
    ],
    ids=["times-out", "garbage"],
)
def test_a_failing_vlm_is_retried_a_bounded_number_of_times_and_recorded(
    server, make_client, tmp_path, reply, requests, words
):
    from tests.test_qc import pair_rows
    from viva_pipelines.config.schema import QcSettings
    from viva_pipelines.evaluation.judge import judge_edit
    from viva_pipelines.qc.dataset import REJECTED, build_qc_dataset
    from viva_pipelines.vlm import review_pair

    server.script = [reply]
    client = make_client(timeout_s=0.2)  # RetryPolicy(max_attempts=3) in the fixture

    def reviewer(pair):
        return review_pair(
            client, chat_server.clip(0), chat_server.clip(1), pair.instruction, pair.edit_type
        )

    storage = Storage(str(tmp_path))
    started = time.monotonic()
    qc = build_qc_dataset(storage, [pair_rows(storage)], QcSettings(), reviewer=reviewer)
    reviewed = qc.manifest[qc.manifest["reason"].fillna("").str.startswith("vlm")]
    assert len(reviewed) >= 1 and set(reviewed["status"]) == {REJECTED}
    for reason in reviewed["reason"]:
        assert reason.startswith("vlm review failed: ") and all(w in reason for w in words)
    assert len(server.requests) == requests * len(reviewed)  # bounded, per pair

    server.requests.clear()
    result = judge_edit(client, chat_server.clip(0), chat_server.clip(1, frames=5), "Make it blue")
    assert result.scores is None and not result.ok
    assert all(w in result.error for w in words), result.error
    assert len(server.requests) == requests
    assert time.monotonic() - started < 60  # nothing waits on the endpoint for long
