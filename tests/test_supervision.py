"""The trainer's ties to its launcher (watchdog) and to its run folder (lease), and the CLI's
cleanup of runs whose worker died."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from viva_pipelines.defs.runs import WORKER_TAG, pool_waits, release_dead_runs
from viva_pipelines.storage import Storage
from viva_pipelines.train.supervision import (
    LeaseHeld,
    RunLease,
    process_alive,
    process_identity,
    watch_launcher,
)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_process_identity_outlives_pid_reuse_and_tells_dead_from_alive():
    me = process_identity()
    assert process_alive(me) is True
    child = _sleeper()
    identity = process_identity(child.pid)
    assert process_alive(identity) is True
    child.kill()
    deadline = time.monotonic() + 5
    while process_alive(identity) and time.monotonic() < deadline:  # (the kill is asynchronous)
        time.sleep(0.01)
    assert process_alive(identity) is False  # a zombie, not yet reaped, counts as dead
    child.wait()
    assert process_alive(identity) is False
    host, pid, start = me.split(":")
    assert process_alive(f"{host}:{pid}:{int(start) + 1}") is False  # same pid, another process
    assert process_alive(f"not-{socket.gethostname()}:{pid}:{start}") is None  # cannot tell


def test_the_watchdog_fires_once_the_launcher_is_gone():
    launcher = _sleeper()
    gone = threading.Event()
    watch_launcher(process_identity(launcher.pid), interval_s=0.1, on_gone=lambda _: gone.set())
    time.sleep(0.5)
    assert not gone.is_set()
    launcher.kill()
    launcher.wait()
    assert gone.wait(timeout=2)


def test_a_trainer_dies_with_its_launcher_even_in_a_session_of_its_own(tmp_path: Path):
    """What torchrun does to its workers (a new session), then the launcher is SIGKILLed."""
    launcher = _sleeper()
    script = (
        "from viva_pipelines.train.supervision import watch_launcher; import time;"
        f"watch_launcher({process_identity(launcher.pid)!r}, interval_s=0.2); time.sleep(60)"
    )
    trainer = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    time.sleep(1.5)
    assert trainer.poll() is None
    launcher.kill()
    started = time.monotonic()
    assert trainer.wait(timeout=10) == 75
    assert time.monotonic() - started < 3


def _lease(storage: Storage, identity: str, **kwargs) -> RunLease:
    return RunLease(storage, "sft/run", identity=identity, run="r1", poll_s=0.05, **kwargs)


def test_one_writer_per_run_folder(tmp_path: Path):
    storage = Storage(str(tmp_path))
    said: list[str] = []
    holder = process_identity()
    with _lease(storage, holder, ttl_s=30):
        doc = json.loads(storage.read_bytes("sft/run/lease.json"))
        assert doc["holder"] == holder and doc["run"] == "r1"
        other = _lease(storage, f"{socket.gethostname()}:1:1", wait_s=0.3, say=said.append)
        other.identity = "elsewhere:7:7"  # a live trainer on another host
        with pytest.raises(LeaseHeld, match=f"held by another trainer \\({holder}, run r1"):
            other.acquire()
        assert said and said[0].startswith("waiting for ") and holder in said[0]
    assert not storage.exists("sft/run/lease.json")  # released


def test_a_dead_or_silent_holder_is_taken_over(tmp_path: Path):
    storage = Storage(str(tmp_path))
    said: list[str] = []
    dead = _sleeper()
    dead_identity = process_identity(dead.pid)
    dead.kill()
    dead.wait()
    storage.write_bytes(
        "sft/run/lease.json",
        json.dumps({"holder": dead_identity, "run": "old", "heartbeat": time.time()}).encode(),
    )
    started = time.monotonic()
    with _lease(storage, process_identity(), say=said.append):
        assert time.monotonic() - started < 1  # no waiting for the expiry
    assert "its holder has exited" in said[0]
    storage.write_bytes(
        "sft/run/lease.json",
        json.dumps(
            {"holder": "elsewhere:7:7", "run": "old", "heartbeat": time.time() - 60}
        ).encode(),
    )
    with _lease(storage, process_identity(), ttl_s=30, say=said.append):
        pass
    assert "no heartbeat for 60 s" in said[-1]


def test_the_heartbeat_keeps_a_long_run_s_lease_fresh(tmp_path: Path):
    storage = Storage(str(tmp_path))
    with _lease(storage, process_identity(), ttl_s=0.3):
        first = json.loads(storage.read_bytes("sft/run/lease.json"))["heartbeat"]
        time.sleep(0.5)
        later = json.loads(storage.read_bytes("sft/run/lease.json"))["heartbeat"]
        assert later > first
        other = _lease(storage, "elsewhere:7:7", ttl_s=0.3, wait_s=0.2)
        with pytest.raises(LeaseHeld):
            other.acquire()


def _claim(instance: dg.DagsterInstance, worker: str) -> str:
    run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), tags={WORKER_TAG: worker})
    instance.handle_run_event(
        run.run_id,
        dg.DagsterEvent(  # mark it started
            event_type_value="PIPELINE_START", job_name=run.job_name
        ),
    )
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default("gpu")
    storage.claim_concurrency_slot("gpu", run.run_id, "sft_checkpoint")
    return run.run_id


def test_the_cli_frees_the_slot_of_a_run_whose_worker_died_and_names_a_live_holder():
    config = {"concurrency": {"pools": {"default_limit": 1}}}
    with dg.instance_for_test(overrides=config) as instance:
        live = _claim(instance, process_identity())
        assert pool_waits(instance, {"gpu"}) == [
            f"waiting for pool gpu (limit 1): held by run {live} (step sft_checkpoint, worker"
            f" {process_identity()})"
        ]
        assert release_dead_runs(instance) == []  # a live worker keeps its run and slot
        instance.event_log_storage.free_concurrency_slots_for_run(live)
        dead = _sleeper()
        dead_identity = process_identity(dead.pid)
        dead.kill()
        dead.wait()
        crashed = _claim(instance, dead_identity)
        done = release_dead_runs(instance)
        assert done[0] == f"run {crashed}: marked failed, its worker {dead_identity} is gone"
        assert done[1].startswith(f"pool gpu: freed the slot or place of run {crashed}")
        assert instance.get_run_by_id(crashed).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
        assert pool_waits(instance, {"gpu"}) == []


WAITER = """
import sys, dagster as dg
from viva_pipelines import cli

@dg.asset(pool="gpu")
def toy():
    return 1

instance = dg.DagsterInstance.get()
job = dg.Definitions(assets=[toy]).resolve_implicit_global_asset_job_def()
cli._execute(instance, lambda tags: job.execute_in_process(instance=instance, tags=tags), {"gpu"})
print("the run was not blocked", flush=True)
"""


def test_a_cli_run_waiting_for_a_slot_says_for_whom_and_ends_promptly_on_sigterm(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\n")
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        holder = _claim(instance, process_identity())  # this live process holds the slot
        waiter = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        for line in waiter.stdout:
            lines.append(line)
            if line.startswith("waiting for pool gpu"):
                break
        assert f"held by run {holder} (step sft_checkpoint" in lines[-1], lines
        time.sleep(2)  # blocked in Dagster's slot loop
        waiter.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert waiter.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5
        rest = waiter.stdout.read()
        assert "viva: SIGTERM: stopping" in rest and "marked failed" in rest, rest
        waiting = [r for r in instance.get_runs() if r.run_id != holder]
        assert [r.status for r in waiting] == [dg.DagsterRunStatus.FAILURE]
