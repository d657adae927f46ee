"""What every bench here prints the same way: progress on stderr, the machine line, markdown
tables, millisecond figures, and device synchronisation for honest GPU timings; and how the
recipe benches find ``make demo``'s dataset and run a training entry point.

Run the benches as scripts (``.venv/bin/python bench/<name>.py``): their folder is then on the
import path, so they share this module without being a package."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STARTED = time.perf_counter()


def note(message: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    """One line: torch version, device name, threads (and the load, the machine may be busy)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        name = f"{cpu_name()}, {os.cpu_count()} CPUs"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"torch {torch.__version__} on {device.type}: {name}; "
        f"{torch.get_num_threads()} torch threads{load}"
    )


def table(header: list[str], rows: list[list[str]], right: int = 1) -> None:
    """A markdown table; columns from ``right`` on are right-aligned."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if i >= right else "---" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


# -- timing -----------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dataset_version() -> str:
    """``qc_dataset``'s data version from the Dagster instance ``make demo`` used
    (``DAGSTER_HOME``; the benches' commands name it relative to the repository, ``.dagster``,
    and Dagster wants an absolute path)."""
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        sys.exit("DAGSTER_HOME is not set: run the bench as DAGSTER_HOME=.dagster after make demo")
    os.environ["DAGSTER_HOME"] = os.path.abspath(home)
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("qc_dataset"))
    if event is None or event.asset_materialization is None:
        sys.exit("qc_dataset is not materialized: run `make demo` first")
    return event.asset_materialization.tags["dagster/data_version"]


def run_trainer(module: str, config, log: Path) -> None:
    """Run a training entry point (``viva_pipelines.train.sft`` / ``.grpo``) on ``config`` as
    the assets do, in one process (no torchrun needed), its output appended to ``log``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "run.yaml")
        config.to_yaml(path)
        with open(log, "a") as out:
            subprocess.run(
                [sys.executable, "-m", module, "--config", str(path)],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
