"""Runs whose worker died: fail them and free the pool slots they still hold; say who holds a
pool a new run waits for.

A run worker killed outright (``kill -9``, an OOM kill) cannot tell the instance that it ended:
the run stays ``STARTED`` and keeps its slot of the ``gpu`` pool, so the retry would wait
forever. With the daemon (``make dev``) run monitoring cleans up; without it (``viva
materialize``, ``viva ingest``) the CLI does it here before each run, and ``viva runs clean``
does it on demand. A run is known dead when the worker process recorded in its
:data:`WORKER_TAG` (by the CLI at launch, by the training assets when they start) is gone from
this host; runs of other hosts are left to run monitoring.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from viva_pipelines.train.supervision import process_alive, process_identity

#: Run tag naming the process that executes the run's steps (:func:`process_identity`).
WORKER_TAG = "viva/worker"
_UNFINISHED = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def worker_tags() -> dict[str, str]:
    """Tags for a run executed by this process."""
    return {WORKER_TAG: process_identity()}


def release_dead_runs(instance: dg.DagsterInstance, *, ending: str | None = None) -> list[str]:
    """Fail the unfinished runs whose worker is gone (or is ``ending``, a worker about to exit)
    and free every pool slot held, or waited for, by a dead or finished run. Returns one line
    per thing done."""
    done = []

    def dead(run: dg.DagsterRun) -> str | None:
        worker = run.tags.get(WORKER_TAG)
        return worker if worker and (worker == ending or process_alive(worker) is False) else None

    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_UNFINISHED)):
        if worker := dead(run):
            instance.report_run_failed(run, f"its worker process {worker} is gone")
            done.append(f"run {run.run_id}: marked failed, its worker {worker} is gone")
    storage = instance.event_log_storage
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        # a waiting step of a dead run would be handed the next free slot: queue entries count
        holders = {entry.run_id for entry in [*info.claimed_slots, *info.pending_steps]}
        for run_id in sorted(holders):
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished or dead(run):
                storage.free_concurrency_slots_for_run(run_id)
                state = "unknown" if run is None else run.status.value.lower()
                done.append(f"pool {pool}: freed the slot or place of run {run_id} ({state})")
    return done


def pool_waits(instance: dg.DagsterInstance, pools: Iterable[str]) -> list[str]:
    """For each full pool among ``pools``, who holds it: what a new run will wait for."""
    storage = instance.event_log_storage
    lines = []
    for pool in sorted(set(pools) & set(storage.get_concurrency_keys())):
        info = storage.get_concurrency_info(pool)
        if info.limit is None or len(info.claimed_slots) < info.limit:
            continue
        for slot in info.claimed_slots:
            run = instance.get_run_by_id(slot.run_id)
            worker = run.tags.get(WORKER_TAG, "an unknown worker") if run else "an unknown worker"
            lines.append(
                f"waiting for pool {pool} (limit {info.limit}): held by run {slot.run_id}"
                f" (step {slot.step_key}, worker {worker})"
            )
    return lines
