"""Shared fixtures: a private conf/ per test and an S3 server on loopback (moto)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.chat_server import API_KEY, KEY_ENV, ChatServer
from viva_pipelines.config import Settings, load_settings
from viva_pipelines.vlm import ChatCompletionsClient, RetryPolicy

REPO = Path(__file__).resolve().parent.parent

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with a copy of the repository's conf/base (and conf/prod)."""
    shutil.copytree(REPO / "conf" / "base", tmp_path / "conf" / "base")
    shutil.copytree(REPO / "conf" / "prod", tmp_path / "conf" / "prod")
    return tmp_path


def run_viva(
    args: list[str], project: Path, home: Path, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``viva <args>`` as a user runs it, with the project's conf/ and the Dagster home
    ``home`` (plus ``env``)."""
    variables = {**os.environ, "VIVA_CONF_DIR": str(project / "conf"), "DAGSTER_HOME": str(home)}
    variables.pop("VIVA_ENV", None)
    variables.update(env or {})
    viva = str(Path(sys.executable).parent / "viva")
    return subprocess.run([viva, *args], env=variables, capture_output=True, text=True, timeout=300)


def write_conf(project: Path, env: str, name: str, doc: dict) -> Path:
    path = project / "conf" / env / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def make_settings(project: Path) -> Callable[..., Settings]:
    """``make_settings(**{"ingest.shard_size": 2})``: base conf rooted in the test's tmp dir."""

    def make(env: str | None = None, **overrides: object) -> Settings:
        return load_settings(project / "conf", env, include_local=False, overrides=overrides)

    return make


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, like s3fs's own test-suite uses."""
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ[key] = value
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket per test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


# -- the scripted chat-completions server (tests/chat_server.py) ---------------------------------
@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # loopback must never go via a proxy
    chat = ChatServer()
    thread = threading.Thread(target=chat.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield chat
    chat.shutdown()
    chat.server_close()


@pytest.fixture
def make_client(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ChatCompletionsClient]:
    monkeypatch.setenv(KEY_ENV, API_KEY)

    def make(**overrides: Any) -> ChatCompletionsClient:
        options: dict[str, Any] = {
            "api_key_env": KEY_ENV,
            "retry": RetryPolicy(max_attempts=3, backoff_s=0.01, max_backoff_s=2.0),
            "timeout_s": 5.0,
        }
        options.update(overrides)
        return ChatCompletionsClient(server.base_url, "test-vlm", **options)

    return make


@pytest.fixture
def run_sft_checkpoint(monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings], tuple]:
    """Materialize ``sft_checkpoint`` alone for some settings, over a one-row ``qc_dataset``
    in their storage root and reported upstream versions, with the training launch recorded
    instead of run (``launch=True``: run). Returns ``(execution result, launches, seconds)``."""

    def run(settings: Settings, *, launch: bool = False) -> tuple:
        import time

        import dagster as dg
        import pandas as pd

        from viva_pipelines.definitions import build_definitions
        from viva_pipelines.defs import training
        from viva_pipelines.defs.jobs import TRAINING_JOB
        from viva_pipelines.qc import dataset as qc
        from viva_pipelines.storage import Storage

        defs = build_definitions(settings)
        Storage(settings.storage.root).write_parquet(
            qc.MANIFEST_KEY, pd.DataFrame({"sample_id": ["a"], "status": ["accepted"]})
        )
        launched: list = []
        if not launch:
            monkeypatch.setattr(training, "launch_training", lambda *a, **k: launched.append(a))
        with dg.instance_for_test() as instance:
            for upstream in ("qc_dataset", "instructor_model"):
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(upstream, tags={"dagster/data_version": "v1"})
                )
            started = time.monotonic()
            result = defs.resolve_job_def(TRAINING_JOB).execute_in_process(
                instance=instance,
                asset_selection=[dg.AssetKey("sft_checkpoint")],
                raise_on_error=False,
            )
            return result, launched, time.monotonic() - started

    return run
