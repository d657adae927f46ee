"""A trainer's ties to the run that launched it: it dies with its launcher, and it is the only
writer of its run folder.

Orchestrators end run workers abruptly (an OOM-killed container, ``kill -9`` of a process
group): nothing runs on the way out, and ``torchrun`` starts its workers in sessions of their
own, so they would survive as orphans and keep writing checkpoints into the folder the retry
uses. Two mechanisms prevent that, both plain Python with no Dagster import:

- **Launcher watchdog.** The launcher puts its :func:`process_identity` in the trainer's
  environment (:data:`LAUNCHER_ENV`); every trainer process checks once a second that this exact
  process (pid *and* start time, so a reused pid does not count) still lives, and exits at once
  when it does not. Checkpoints are written atomically, so exiting at any point loses at most
  the steps since the last one.
- **Run lease.** ``{output_prefix}/lease.json`` in storage (local or S3) names the trainer that
  writes the folder and carries a heartbeat. A second trainer waits for it, saying who holds it,
  and refuses after a while; a lease whose holder is dead (same host) or whose heartbeat is older
  than :data:`LEASE_TTL_S` is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from viva_pipelines.storage import Storage

log = logging.getLogger(__name__)

#: Environment variable holding the launcher's :func:`process_identity`.
LAUNCHER_ENV = "VIVA_LAUNCHER"
#: Environment variable holding the orchestrator run that launched the trainer (for messages).
RUN_ENV = "VIVA_RUN_ID"
#: How often the watchdog looks at the launcher.
WATCH_INTERVAL_S = 1.0
#: A lease whose heartbeat is older than this is stale (its holder stopped without releasing).
LEASE_TTL_S = 30.0
#: How long a second trainer waits for a live lease before refusing.
LEASE_WAIT_S = 90.0
LEASE_NAME = "lease.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), ``""`` where there
    is no ``/proc``; None when there is no such process or it is a zombie (it has exited and
    only waits for its parent to read its status)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc on this system: fall back to a signal-0 probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (command name)"
    return None if fields[0] in ("Z", "X") else fields[19]


def process_identity(pid: int | None = None) -> str:
    """``host:pid:start``: names one process for as long as the host runs, unlike a pid."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def process_alive(identity: str) -> bool | None:
    """Whether the process named by :func:`process_identity` still runs: None when it runs on
    another host (this one cannot tell)."""
    host, _, rest = identity.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    now = _start_time(int(pid))
    return now is not None and (not start or not now or now == start)


def launcher_environment(run_id: str | None = None) -> dict[str, str]:
    """What a launcher adds to the trainer's environment: itself, and the run it serves."""
    env = {LAUNCHER_ENV: process_identity()}
    if run_id:
        env[RUN_ENV] = run_id
    return env


def watch_launcher(
    identity: str | None = None,
    *,
    interval_s: float = WATCH_INTERVAL_S,
    on_gone: Callable[[str], None] | None = None,
) -> threading.Thread | None:
    """Start a daemon thread that ends this process when the launcher is gone.

    ``identity`` defaults to :data:`LAUNCHER_ENV`; without one (a trainer started by hand)
    nothing is watched. ``on_gone(identity)`` replaces the default exit (for tests).
    """
    identity = identity or os.environ.get(LAUNCHER_ENV)
    if not identity:
        return None

    def exit_now(who: str) -> None:
        print(
            f"[viva] the process that launched this trainer ({who}) is gone: stopping; a retry"
            " resumes from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        os._exit(75)  # EX_TEMPFAIL; nothing may run on the way out (no half-written checkpoint)

    def watch() -> None:
        while process_alive(identity) is not False:
            time.sleep(interval_s)
        (on_gone or exit_now)(identity)

    thread = threading.Thread(target=watch, name="viva-launcher-watchdog", daemon=True)
    thread.start()
    return thread


class LeaseHeld(RuntimeError):
    """Another live trainer writes this run folder."""


@dataclass
class Lease:
    holder: str  # process_identity of the trainer
    run: str  # the orchestrator run it serves, or ""
    heartbeat: float  # time.time() of the last renewal

    def describe(self) -> str:
        run = f", run {self.run}" if self.run else ""
        return f"{self.holder}{run}, last heartbeat {time.time() - self.heartbeat:.0f} s ago"


class RunLease:
    """One writer per run folder: ``with RunLease(storage, prefix): train()``.

    ``acquire`` takes a free, stale or own lease; otherwise it waits up to ``wait_s``, logging
    who holds it, then raises :class:`LeaseHeld`. While held, a thread renews the heartbeat every
    ``ttl_s / 3``. A write is confirmed by reading it back, so of two trainers that find the
    lease free at the same moment, the second to write wins and the first waits.
    """

    def __init__(
        self,
        storage: Storage,
        prefix: str,
        *,
        ttl_s: float = LEASE_TTL_S,
        wait_s: float = LEASE_WAIT_S,
        poll_s: float = 1.0,
        identity: str | None = None,
        run: str | None = None,
        say: Callable[[str], None] = log.warning,
    ) -> None:
        self.storage, self.key = storage, f"{prefix}/{LEASE_NAME}"
        self.ttl_s, self.wait_s, self.poll_s = ttl_s, wait_s, poll_s
        self.identity = identity or process_identity()
        self.run = run if run is not None else os.environ.get(RUN_ENV, "")
        self.say = say
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLease:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def read(self) -> Lease | None:
        if not self.storage.exists(self.key):
            return None
        try:
            return Lease(**json.loads(self.storage.read_bytes(self.key)))
        except (ValueError, TypeError):
            return None  # unreadable: nobody can be said to hold it

    def stale_reason(self, lease: Lease) -> str | None:
        """Why ``lease`` no longer protects anything, or None while its holder lives."""
        if process_alive(lease.holder) is False:
            return "its holder has exited"
        age = time.time() - lease.heartbeat
        if age > self.ttl_s:
            return f"no heartbeat for {age:.0f} s (> {self.ttl_s:g} s)"
        return None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        announced = False
        while True:
            lease = self.read()
            why = None if lease is None else self.stale_reason(lease)
            if lease is None or lease.holder == self.identity or why:
                if lease is not None and why and lease.holder != self.identity:
                    self.say(
                        f"taking over {self.storage.uri(self.key)}: {why} ({lease.describe()})"
                    )
                self._write()
                if (mine := self.read()) is not None and mine.holder == self.identity:
                    break
                continue  # another trainer wrote in between: look again
            if time.monotonic() > deadline:
                raise LeaseHeld(
                    f"{self.storage.uri(self.key)} is held by another trainer"
                    f" ({lease.describe()}): only one may write a run folder. Stop that one, or"
                    f" wait for its lease to expire ({self.ttl_s:g} s without a heartbeat)"
                )
            if not announced:
                self.say(f"waiting for {self.storage.uri(self.key)}: held by {lease.describe()}")
                announced = True
            time.sleep(self.poll_s)
        self._thread = threading.Thread(target=self._beat, name="viva-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        lease = self.read()
        if lease is not None and lease.holder == self.identity:
            self.storage.delete(self.key)

    def _write(self) -> None:
        doc = {"holder": self.identity, "run": self.run, "heartbeat": time.time()}
        self.storage.write_bytes(self.key, json.dumps(doc).encode())

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            lease = self.read()
            if lease is not None and lease.holder != self.identity:
                self.say(f"{self.storage.uri(self.key)} was taken over by {lease.describe()}")
                return
            try:
                self._write()
            except Exception as exc:  # a storage hiccup: the next beat tries again
                self.say(f"lease heartbeat failed: {exc}")
