"""The rehearsal (conf/rehearsal: conf/prod at toy sizes, on tiny models in the production
formats) against real services, the way production runs it: the Dagster instance in PostgreSQL
(deploy/dagster.prod.yaml), the storage root, the source videos and the benchmark suite on S3
(a moto server), an MLflow tracking server with a PostgreSQL backend store and its artifacts on
S3, and the VLM of the QC review and the benchmark judge behind `viva vlm-serve` (the
OpenAI chat-completions protocol). Every command is the `viva` CLI as a user runs it, with
prod's environment variables pointing at these services.

Skips when PostgreSQL is not reachable on 127.0.0.1:5432, except under ``CI=true``."""

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import boto3
import pytest

from tests.conftest import REPO
from viva_pipelines.defs.lineage import nodes_by_asset
from viva_pipelines.video.io import read_video

VIVA = str(Path(sys.executable).parent / "viva")
MLFLOW = str(Path(sys.executable).parent / "mlflow")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
ENV = "rehearsal"
VLM_KEY = "sk-rehearsal-key"


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_databases() -> Iterator[tuple[str, str]]:
    """Two fresh databases (the Dagster instance, the MLflow backend store), dropped after."""
    try:
        admin = _pg_connect()
    except Exception as exc:  # psycopg2.OperationalError, or psycopg2 missing
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        message = f"PostgreSQL is not reachable on {PG['host']}:{PG['port']} ({reason})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(f"{message}; start it to run this test")
    suffix = uuid.uuid4().hex[:10]
    names = (f"viva_test_{suffix}", f"viva_mlflow_{suffix}")
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f'CREATE DATABASE "{name}"')
        yield names
    finally:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_mlflow_s3_client_gets_the_storage_endpoint(monkeypatch: pytest.MonkeyPatch):
    """MLflow's S3 artifact client reads only MLFLOW_S3_ENDPOINT_URL: storage.s3.endpoint_url
    fills it in (for the torchrun children too), an explicit variable wins."""
    from viva_pipelines.tracking import use_s3_endpoint

    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    use_s3_endpoint(None)
    assert "MLFLOW_S3_ENDPOINT_URL" not in os.environ
    use_s3_endpoint("http://minio.example:9000")
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.example:9000"
    use_s3_endpoint("http://other.example:9000")
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.example:9000"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(
    pg_databases: tuple[str, str], s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> Iterator[str]:
    """``mlflow server`` on a free loopback port: backend store in PostgreSQL, artifacts on
    S3 (moto), proxied for clients that use ``mlflow-artifacts:``."""
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    log = open(tmp_path / "mlflow-server.log", "wb")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [
            MLFLOW,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"postgresql+psycopg2://postgres@127.0.0.1:5432/{pg_databases[1]}",
            "--serve-artifacts",
            "--artifacts-destination",
            f"s3://{s3_bucket}/mlflow",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(server, f"{url}/health", tmp_path / "mlflow-server.log")
        yield url
    finally:
        _stop(server)
        log.close()


def _wait_for(server: subprocess.Popen, url: str, log: Path, headers: dict | None = None) -> None:
    """Until ``url`` answers (120 s at most); a server that exits shows its log."""
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise RuntimeError(
                f"{server.args[:2]} exited ({server.returncode}):\n" + log.read_text()[-3000:]
            )
        try:
            urllib.request.urlopen(
                urllib.request.Request(url, headers=headers or {}), timeout=2
            ).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer at {url} after 120 s") from None
            time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def _upload_dir(client, local: Path, bucket: str, prefix: str) -> int:
    count = 0
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
            count += 1
    return count


def _keys(client, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


@pytest.fixture
def vlm_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The rehearsal's models written by `viva rehearsal-models`, and its instructor served by
    `viva vlm-serve` on a free port: (base URL, model folder)."""
    models = tmp_path / "models"
    written = subprocess.run(
        [VIVA, "rehearsal-models", "--out", str(models)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert written.returncode == 0, written.stderr[-3000:]
    port = _free_port()
    log = open(tmp_path / "vlm-server.log", "wb")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [
            VIVA,
            "vlm-serve",
            "--model",
            str(models / "llava-llama-3"),
            "--port",
            str(port),
            "--api-key-env",
            "VIVA_VLM_API_KEY",
        ],
        env={**os.environ, "VIVA_VLM_API_KEY": VLM_KEY, "HF_HUB_OFFLINE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_for(
            server,
            f"{url}/models",
            tmp_path / "vlm-server.log",
            {"Authorization": f"Bearer {VLM_KEY}"},
        )
        yield url, models
    finally:
        _stop(server)
        log.close()


@pytest.mark.slow
def test_the_rehearsal_runs_the_production_graph_on_postgres_s3_and_an_mlflow_server(
    project: Path,
    tmp_path: Path,
    pg_databases: tuple[str, str],
    mlflow_server: str,
    s3_endpoint: str,
    s3_bucket: str,
    vlm_server: tuple[str, Path],
):
    dagster_db, mlflow_db = pg_databases
    vlm_url, models = vlm_server
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.prod.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "VIVA_CONF_DIR": str(project / "conf"),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_PORT": str(PG["port"]),
        "DAGSTER_PG_DB": dagster_db,
        "DAGSTER_PG_USERNAME": PG["user"],
        "DAGSTER_PG_PASSWORD": "unused",  # trust auth
        # What conf/prod reads from the environment, pointed at this machine's services.
        "VIVA_BUCKET": s3_bucket,
        "VIVA_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "VIVA_VLM_BASE_URL": vlm_url,
        "VIVA_VLM_MODEL": "llava-llama-3",
        "VIVA_VLM_API_KEY": VLM_KEY,
        "VIVA_REHEARSAL_MODELS": str(models),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    # The code must pass storage.s3.endpoint_url on to MLflow's S3 client itself.
    env.pop("MLFLOW_S3_ENDPOINT_URL", None)
    shutil.copytree(REPO / "conf" / "rehearsal", project / "conf" / "rehearsal")

    def viva(*args: str, env_name: str | None = ENV) -> subprocess.CompletedProcess:
        run_env = {**env, "VIVA_ENV": env_name} if env_name else env
        if not env_name:
            run_env.pop("VIVA_ENV", None)
        done = subprocess.run(
            [VIVA, *args], env=run_env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"viva {' '.join(args)}:\n{done.stdout}\n{done.stderr[-4000:]}"
        return done

    # Render the demo world and its 1-per-category suite locally (base conf), then upload both
    # to where conf/prod reads them from on S3.
    viva(
        "demo-data",
        "--out",
        str(tmp_path / "videos"),
        "--videos",
        "4",  # (3 leave the val split without a video for GRPO's held-out groups)
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
        "0",  # conf/prod reads no image-pair set
        env_name=None,
    )
    assert _upload_dir(s3, tmp_path / "videos", s3_bucket, "incoming/videos") == 12
    suite = project / "data" / "benchmarks" / "demo"
    assert _upload_dir(s3, suite, s3_bucket, "benchmarks/vie-bench")
    shutil.rmtree(project / "data")  # nothing below may fall back on a local root

    started = time.monotonic()
    ingested = viva("ingest")
    assert "4 videos in 1 shards (4 new)" in ingested.stdout
    assert "shard-000000: 4 videos ok, 0 rejected, " in ingested.stdout
    built = viva("materialize", "qc_dataset")
    assert "check every_edit_type_present: passed" in built.stdout
    trained = viva("materialize", "instructor_model", "sft_checkpoint")
    assert "instructor_model, sft_checkpoint materialized" in trained.stdout
    viva("materialize", "reward_models", "grpo_lora")
    scored = viva("materialize", "benchmark_suite", "benchmark_scores")
    assert "check no_training_video_in_suite: passed" in scored.stdout
    # edited_videos: a request on S3 (conf/prod's inference root), edited whole by the models
    # registered on the MLflow server (models:/viva-sft/latest and the Edit-GRPO LoRA).
    video = next((tmp_path / "videos").glob("*.mp4"))
    s3.upload_file(str(video), s3_bucket, "edit-requests/in/clip.mp4")
    request = {
        "video": "in/clip.mp4",
        "instruction": "Remove the red circle.",
        "out": "out/clip.mp4",
    }
    s3.put_object(
        Bucket=s3_bucket, Key="edit-requests/requests.jsonl", Body=json.dumps(request) + "\n"
    )
    edited = viva("materialize", "edited_videos")
    assert "edited_videos materialized" in edited.stdout
    print(f"\nthe rehearsal's graph on the services: {time.monotonic() - started:.0f} s")
    out = tmp_path / "edited.mp4"
    (key,) = [k for k in _keys(s3, s3_bucket, "prod/edited_videos/") if k.endswith("/out/clip.mp4")]
    s3.download_file(s3_bucket, key, str(out))
    assert read_video(out)[0].shape == read_video(video)[0].shape  # every frame, full size
    reported = viva("report")
    assert "### Averages over categories" in reported.stdout
    assert "failed edits: 0" in reported.stdout
    # The served VLM judged every edit: each model's averages have VLM scores.
    header, *rows = [line for line in reported.stdout.splitlines() if line.startswith("| ")][:5]
    assert header.split(" | ")[1] == "VLM IF"
    for row in rows[1:]:  # after the separator row
        assert 0 <= float(row.split(" | ")[1]) <= 10, row
    audited = viva("lineage", "benchmark", "--json")
    tree = json.loads(audited.stdout[audited.stdout.index("{") :])

    # S3: every asset's objects under the root, nothing on the local disk.
    keys = _keys(s3, s3_bucket, "prod/")
    assert any(k.startswith("prod/raw_videos/shard-000000/") for k in keys)
    assert "prod/qc_dataset/manifest.parquet" in keys
    assert any(k.startswith("prod/sft_checkpoint/") and "/model/" in k for k in keys)
    assert any(k.startswith("prod/grpo_lora/") and "/lora/" in k for k in keys)
    assert any(k.startswith("prod/benchmark_scores/") and k.endswith("table.parquet") for k in keys)
    assert not (project / "data").exists()
    # Every pair was reviewed by the served VLM, and every edit type made it through.
    import pandas as pd

    body = s3.get_object(Bucket=s3_bucket, Key="prod/qc_dataset/manifest.parquet")["Body"]
    reviewed = pd.read_parquet(io.BytesIO(body.read()))
    assert reviewed["vlm_score"].notna().all() and len(set(reviewed["edit_type"])) == 9

    # Lineage reaches the raw files on S3, by checksum.
    found = nodes_by_asset(tree)
    videos = [v for node in found["raw_videos"] for v in node.get("details", {}).get("videos", [])]
    assert len(videos) == 4
    for video in videos:
        assert video["uri"].startswith(f"s3://{s3_bucket}/incoming/videos/")
        body = s3.get_object(Bucket=s3_bucket, Key=video["uri"].split("/", 3)[3])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == video["sha256"]

    # PostgreSQL: the Dagster runs and the materializations are in the instance database.
    with closing(_pg_connect(dagster_db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM runs GROUP BY status")
        statuses = dict(cur.fetchall())
        assert statuses.get("SUCCESS", 0) >= 5 and set(statuses) == {"SUCCESS"}, statuses
        cur.execute(
            "SELECT DISTINCT asset_key FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        materialized = {json.loads(row[0])[0] for row in cur.fetchall()}
    print(f"materialized on PostgreSQL: {', '.join(sorted(materialized))}")
    assert materialized == {
        "raw_videos",
        "tracked_masks",
        "synthetic_pairs",
        "qc_dataset",
        "instructor_model",
        "sft_checkpoint",
        "reward_models",
        "grpo_lora",
        "benchmark_suite",
        "benchmark_scores",
        "edited_videos",
    }

    # MLflow: runs with their lineage tags and registered models, artifacts on S3.
    import mlflow

    client = mlflow.MlflowClient(mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("viva-pipelines")
    assert experiment.artifact_location == f"s3://{s3_bucket}/mlflow"
    runs = {
        r.data.tags["dagster.asset_key"]: r
        for r in client.search_runs([experiment.experiment_id])
        if "dagster.asset_key" in r.data.tags
    }
    assert {"instructor_model", "sft_checkpoint", "grpo_lora", "benchmark_scores"} <= set(runs)
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.data.tags["dagster.run_id"]
    assert "viva.upstream.qc_dataset.data_version" in runs["sft_checkpoint"].data.tags
    assert "viva.upstream.sft_checkpoint.data_version" in runs["grpo_lora"].data.tags
    assert "grpo/average/clip_if" in runs["benchmark_scores"].data.metrics
    artifacts = _keys(s3, s3_bucket, "mlflow/")
    registered = {  # (the instructor is models.instructor's, not one trained here)
        "viva-sft": "sft_checkpoint",
        "viva-grpo-lora": "grpo_lora",
    }
    for name, asset in registered.items():
        version = client.get_model_version(name, "1")
        assert version.run_id == runs[asset].info.run_id
        assert version.source.startswith(f"s3://{s3_bucket}/mlflow/")
        prefix = f"mlflow/{version.run_id}/artifacts/model/"
        assert any(k.startswith(prefix) for k in artifacts), (name, artifacts[:20])
    scores_id = runs["benchmark_scores"].info.run_id
    assert any(k.startswith(f"mlflow/{scores_id}/artifacts/benchmark/") for k in artifacts)
    assert found["sft_checkpoint"][0]["details"]["registered_model"] == "viva-sft/1"

    # ... and the tracking server's backend store is the PostgreSQL database.
    with closing(_pg_connect(mlflow_db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] >= 3
        cur.execute("SELECT name FROM registered_models ORDER BY name")
        assert [row[0] for row in cur.fetchall()] == ["viva-grpo-lora", "viva-sft"]
