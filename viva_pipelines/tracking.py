"""MLflow runs that carry the lineage of what produced them (docs/architecture.md).

Each run is tagged with the Dagster run id, asset key, partition, code version, git commit and the
data versions of its upstream assets, so a benchmark number can be traced back to raw files.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

PROJECT_DIR = Path(__file__).resolve().parent.parent


@cache
def git_commit() -> str:
    """Commit of the checkout the code runs from, ``unknown`` for an installed wheel."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def lineage_tags(
    *,
    dagster_run_id: str,
    asset_key: str,
    partition: str | None = None,
    code_version: str | None = None,
    upstream_data_versions: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """MLflow tags linking a run to the Dagster materialization and data that produced it."""
    commit = git_commit()
    tags = {
        "dagster.run_id": dagster_run_id,
        "dagster.asset_key": asset_key,
        "viva.git_commit": commit,
        "mlflow.source.git.commit": commit,
    }
    if partition is not None:
        tags["dagster.partition"] = partition
    if code_version is not None:
        tags["viva.code_version"] = code_version
    for upstream, version in sorted((upstream_data_versions or {}).items()):
        tags[f"viva.upstream.{upstream}.data_version"] = version
    return tags


def use_s3_endpoint(endpoint_url: str | None) -> None:
    """Point MLflow's S3 artifact client at ``storage.s3.endpoint_url`` (MinIO, another
    S3-compatible server): MLflow reads its endpoint from ``MLFLOW_S3_ENDPOINT_URL`` only. An
    endpoint already in the environment wins; child processes (torchrun) inherit it."""
    if endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint_url)


class TrackingServerUnreachable(ConnectionError):
    """The MLflow tracking server did not answer; raised before any work starts."""


#: How long :func:`check_reachable` waits for a tracking server (MLflow's own client would
#: retry for minutes before failing).
REACHABLE_TIMEOUT_S = 5.0


def check_reachable(tracking_uri: str, timeout_s: float = REACHABLE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingServerUnreachable` naming ``tracking_uri`` when an ``http(s)``
    tracking server does not answer within ``timeout_s``. Any HTTP answer counts as reachable
    (a proxy asking for auth, a server without ``/health``); other URIs are not checked."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except OSError as exc:  # URLError, refused connections and timeouts are all OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise TrackingServerUnreachable(
            f"MLflow tracking server at {tracking_uri} is not reachable: {reason}"
        ) from exc


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """Id of experiment ``name`` on ``tracking_uri``, created with ``artifact_location`` if new;
    an unreachable server fails fast with :class:`TrackingServerUnreachable`."""
    import mlflow

    check_reachable(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


@contextmanager
def tracked_run(
    tracking_uri: str,
    experiment: str,
    *,
    artifact_location: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Run]:
    """Open an MLflow run on ``tracking_uri`` for this process's fluent ``mlflow.log_*`` calls.

    The run ends FAILED when the block raises, FINISHED otherwise.
    """
    import mlflow

    experiment_id = ensure_experiment(tracking_uri, experiment, artifact_location)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})):
        yield mlflow.active_run()


#: MLflow's limit on a param value's length.
_PARAM_MAX = 6000


def log_params(params: Mapping[str, object]) -> None:
    """Log params into the active run (long values cut to MLflow's limit)."""
    import mlflow

    mlflow.log_params({k: str(v)[:_PARAM_MAX] for k, v in params.items()})


def log_metrics(metrics: Mapping[str, float]) -> None:
    """Log metrics into the active run."""
    import mlflow

    mlflow.log_metrics(dict(metrics))


def log_dataset_input(frame: pd.DataFrame, source: str, digest: str, name: str) -> None:
    """``mlflow.log_input`` of a dataset manifest with our data version as its digest, so the
    run's Datasets tab names exactly the data it trained on."""
    import mlflow
    import mlflow.data

    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest[:36])
    mlflow.log_input(dataset, context="training")


def register_model_dir(local_dir: str | Path, run_id: str, name: str) -> str:
    """Log a model directory as the run's ``model`` artifacts and register it as a new version
    of ``name``; returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    client.log_artifacts(run_id, str(local_dir), "model")
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source, run_id=run_id)
    return version.version


def set_tags(tags: Mapping[str, str]) -> None:
    """Tag the active run (values cut to MLflow's limit)."""
    import mlflow

    mlflow.set_tags({k: str(v)[:_PARAM_MAX] for k, v in tags.items()})


def tag_model_version(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Tag a registered model version, e.g. a LoRA with the base model it adapts."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value)[:_PARAM_MAX])
