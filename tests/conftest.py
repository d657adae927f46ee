"""Shared fixtures: a private conf/ per test and an S3 server on loopback (moto)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from viva_pipelines.config import Settings, load_settings

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
