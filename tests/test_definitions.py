import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import REPO
from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.jobs import SHARD_ASSETS, SHARD_JOB


def test_definitions_load_with_the_asset_graph_job_sensor_and_resources(make_settings):
    defs = build_definitions(make_settings())
    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert "raw_videos" in keys
    raw = defs.resolve_assets_def("raw_videos")
    assert raw.partitions_def.name == "video_shards"
    assert raw.code_versions_by_key[dg.AssetKey("raw_videos")]
    assert {"tracked_masks", "synthetic_pairs", "qc_dataset"} <= keys
    job = defs.resolve_job_def(SHARD_JOB)
    assert job.partitions_def.name == "video_shards"
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == set(SHARD_ASSETS)
    assert defs.resolve_sensor_def("raw_video_sensor").job_name == SHARD_JOB
    checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys}
    assert {
        "train_split_non_empty",
        "every_edit_type_present",
        "no_video_in_two_splits",
        "referenced_files_exist",
    } <= checks
    assert set(defs.resources) >= {"storage", "video_source", "s3", "mlflow"}


def test_prod_definitions_point_at_s3_and_carry_conf_op_tags(make_settings, monkeypatch):
    monkeypatch.setenv("VIVA_BUCKET", "acme")
    tags = {"raw_videos": {"dagster/concurrency_key": "ingest"}}
    defs = build_definitions(make_settings("prod", **{"execution.asset_tags": tags}))
    assert defs.resources["storage"].root == "s3://acme/prod"
    assert defs.resources["video_source"].root == "s3://acme/incoming/videos"
    assert defs.resources["mlflow"].tracking_uri.startswith("http")
    raw = defs.resolve_assets_def("raw_videos")
    assert raw.op.tags["dagster/concurrency_key"] == "ingest"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_webserver_loads_workspace_yaml_and_lists_the_assets(project: Path, tmp_path: Path):
    port = _free_port()
    env = {
        **os.environ,
        "VIVA_CONF_DIR": str(project / "conf"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    (tmp_path / "dagster_home").mkdir()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            str(bin_dir / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, nodes = time.monotonic() + 120, None
        while time.monotonic() < deadline and nodes is None:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                answer = _graphql(
                    port,
                    "{ assetNodes { assetKey { path } partitionDefinition "
                    "{ dimensionTypes { dynamicPartitionsDefinitionName } } } }",
                )
                nodes = answer["data"]["assetNodes"]
            except OSError:
                time.sleep(1)
        assert nodes is not None, "webserver did not answer within 120 s"
        keys = {"/".join(node["assetKey"]["path"]) for node in nodes}
        assert "raw_videos" in keys
        raw = next(n for n in nodes if n["assetKey"]["path"] == ["raw_videos"])
        dims = raw["partitionDefinition"]["dimensionTypes"]
        assert dims[0]["dynamicPartitionsDefinitionName"] == "video_shards"
        locations = _graphql(
            port,
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }",
        )
        entries = locations["data"]["workspaceOrError"]["locationEntries"]
        assert [(e["name"], e["loadStatus"]) for e in entries] == [("viva_pipelines", "LOADED")]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dg_loads_the_project(project, tmp_path):
    """Dagster's project CLI ([tool.dg] in pyproject.toml) loads the same code location."""
    env = {**os.environ, "VIVA_CONF_DIR": str(project / "conf"), "DAGSTER_HOME": str(tmp_path)}
    dg_cli = str(Path(sys.executable).parent / "dg")
    checked = subprocess.run(
        [dg_cli, "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = subprocess.run(
        [dg_cli, "list", "defs", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    assets = {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]}
    assert {"raw_videos", "sft_checkpoint", "benchmark_scores", "edited_videos"} <= assets
