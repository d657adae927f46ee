"""Where a training process reports: its log, Dagster (through Pipes) and MLflow.

Only rank 0 reports. Under Dagster Pipes (the ``sft_checkpoint`` asset) log lines and the
final materialization go back to Dagster; with an MLflow run id in the config, metrics and
artifacts go into that run, which the asset opened with its lineage tags. Run by hand, the
process just logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

from viva_pipelines.storage import Storage
from viva_pipelines.train.distributed import distributed
from viva_pipelines.train.runs import input_failure_key
from viva_pipelines.train.supervision import RunLease, watch_launcher

log = logging.getLogger("viva_pipelines.train")

_PIPES_CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"


class Reporter:
    def __init__(self, *, enabled: bool, tracking_uri: str | None, run_id: str | None):
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.run_id = run_id if enabled else None
        self._stack = ExitStack()
        self.pipes: Any = None
        self._mlflow: Any = None

    def __enter__(self) -> Reporter:
        if self.enabled and os.environ.get(_PIPES_CONTEXT_ENV):
            from dagster_pipes import open_dagster_pipes

            self.pipes = self._stack.enter_context(open_dagster_pipes())
        if self.run_id:
            from mlflow.tracking import MlflowClient

            self._mlflow = MlflowClient(self.tracking_uri)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        log.info(message)
        if self.pipes is not None:
            self.pipes.log.info(message)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if self._mlflow is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in values.items()]
        self._mlflow.log_batch(self.run_id, metrics=batch)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow is not None:
            self._mlflow.log_artifact(self.run_id, str(path), artifact_path)

    def materialization(self, metadata: dict[str, Any]) -> None:
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=metadata)


def run_entry_point(
    argv: list[str] | None,
    *,
    description: str,
    load_config: Callable[[str], Any],
    train: Callable[[Any, Any, Reporter], dict[str, Any]],
) -> int:
    """The ``python -m viva_pipelines.train.<loop> --config <yaml>`` entry point both loops
    share: die with the launcher, join the torchrun group, hold the run folder's lease (rank 0),
    report from rank 0 (Pipes materialization, MLflow), and print the run's summary (without
    its history) as the last line of stdout. A ``ValueError`` (inputs that cannot train) is
    also written to the run folder (``runs.input_failure_key``), so the launcher does not
    retry it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="the run's YAML config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_config(args.config)
    watch_launcher()
    with distributed(config.runtime.device) as ctx:
        tracking = config.tracking
        data = config.data
        storage = Storage(
            data.storage_root, endpoint_url=data.endpoint_url, region_name=data.region_name
        )
        lease = RunLease(storage, config.output_prefix) if ctx.is_main else nullcontext()
        with (
            lease,
            Reporter(
                enabled=ctx.is_main, tracking_uri=tracking.tracking_uri, run_id=tracking.run_id
            ) as report,
        ):
            try:
                summary = train(config, ctx, report)
            except ValueError as exc:  # our word for "these inputs cannot train"
                if ctx.is_main:
                    storage.write_json(input_failure_key(config.output_prefix), {"error": f"{exc}"})
                raise
            report.materialization(
                {k: v for k, v in summary.items() if k != "history" and not isinstance(v, dict)}
            )
            if ctx.is_main:
                print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0
