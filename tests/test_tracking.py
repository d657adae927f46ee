from pathlib import Path

import dagster as dg
import mlflow
import pytest

from viva_pipelines.defs.resources import MlflowResource
from viva_pipelines.tracking import git_commit, lineage_tags


def test_lineage_tags_carry_run_asset_partition_code_and_upstream_versions():
    tags = lineage_tags(
        dagster_run_id="r1",
        asset_key="sft_checkpoint",
        partition="shard-000001",
        code_version="sft-3",
        upstream_data_versions={"qc_dataset": "abc123"},
    )
    assert tags["dagster.run_id"] == "r1"
    assert tags["dagster.asset_key"] == "sft_checkpoint"
    assert tags["dagster.partition"] == "shard-000001"
    assert tags["viva.code_version"] == "sft-3"
    assert tags["viva.upstream.qc_dataset.data_version"] == "abc123"
    assert tags["mlflow.source.git.commit"] == git_commit() != ""
    assert "dagster.partition" not in lineage_tags(dagster_run_id="r", asset_key="a")


def _materialize(resource: MlflowResource, fail: bool = False) -> dg.ExecuteInProcessResult:
    parts = dg.StaticPartitionsDefinition(["shard-000007"])

    @dg.asset(partitions_def=parts, code_version="toy-2")
    def toy_model(context: dg.AssetExecutionContext, mlflow_tracking: MlflowResource) -> None:
        with mlflow_tracking.start_run(context, upstream_data_versions={"qc_dataset": "d1"}):
            mlflow.log_metric("loss", 0.5)
            if fail:
                raise RuntimeError("training diverged")

    return dg.materialize(
        [toy_model],
        partition_key="shard-000007",
        resources={"mlflow_tracking": resource},
        raise_on_error=False,
    )


def test_resource_opens_a_tagged_run_and_links_it_in_metadata(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    resource = MlflowResource(
        tracking_uri=uri, experiment="t", artifact_location=(tmp_path / "art").as_uri()
    )
    result = _materialize(resource)
    assert result.success
    metadata = result.asset_materializations_for_node("toy_model")[0].metadata
    run_id = metadata["mlflow_run_id"].value
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["loss"] == 0.5
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["dagster.asset_key"] == "toy_model"
    assert run.data.tags["dagster.partition"] == "shard-000007"
    assert run.data.tags["viva.code_version"] == "toy-2"
    assert run.data.tags["viva.upstream.qc_dataset.data_version"] == "d1"
    assert run.info.run_name == "toy_model-shard-000007"
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (tmp_path / "art").as_uri()


def test_a_failing_step_marks_its_run_failed(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/sub/mlflow.db"
    result = _materialize(MlflowResource(tracking_uri=uri, experiment="t"), fail=True)
    assert not result.success
    runs = mlflow.MlflowClient(tracking_uri=uri).search_runs(
        [mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("t").experiment_id]
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_an_unreachable_tracking_server_fails_the_step_with_its_reason_alone():
    """The environment's fault, not a bug: a dg.Failure naming the server (the console prints
    its one line, defs/console.py), before the step's body runs."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _materialize(MlflowResource(tracking_uri=f"http://127.0.0.1:{port}", experiment="t"))
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert error.cls_name == "Failure", error.cls_name
    assert f"MLflow tracking server at http://127.0.0.1:{port} is not reachable" in error.message


@pytest.fixture(autouse=True)
def _reset_mlflow_uri():
    yield
    mlflow.set_tracking_uri(None)
