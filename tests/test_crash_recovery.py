"""A run worker killed outright, then retried: ``sft_checkpoint`` through ``viva materialize``
and ``grpo_lora`` through a Dagster run (``dagster job execute``).

The sequence a crashed container produces: start the materialization in a process group of its
own, ``SIGKILL`` the whole group once the trainer has written a checkpoint, then retry. Checks:
no process of the killed run remains within 10 s (torchrun starts its workers in sessions of
their own, so the group kill alone would leave them); the retry starts training within 60 s (it
is not stuck behind the dead run's ``gpu`` pool slot or its run-folder lease), resumes from the
checkpoint, and ends with the weights of an uninterrupted run of the same config.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, write_conf

BIN = Path(sys.executable).parent
TRAINER = {"sft_checkpoint": "viva_pipelines.train.sft", "grpo_lora": "viva_pipelines.train.grpo"}
WEIGHTS = {"sft_checkpoint": "model", "grpo_lora": "lora"}


class Launched:
    """A command in a session of its own, its output lines timestamped as they come."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip()))

    def first(self, words: str) -> float | None:
        return next((t for t, line in self.lines if words in line), None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def _processes(marker: str) -> list[str]:
    """The live processes whose command line contains ``marker``: "pid ppid session command"
    (the whole command line: the caller reads the config path from it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if marker in command:
                found.append(f"{entry.name} {stat[1]} {stat[3]} {command}")
    return found


def _processes_of(root: Path) -> list[int]:
    """The live processes started for the project at ``root`` (their VIVA_CONF_DIR says so)."""
    marker = f"VIVA_CONF_DIR={root / 'conf'}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _until(what, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := what():
            return value
        time.sleep(step)
    return None


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A project with its dataset, instructor and reward models materialized."""
    root = tmp_path_factory.mktemp("crash")
    shutil.copytree(REPO / "conf" / "base", root / "conf" / "base")
    write_conf(
        root,
        "local",
        "train.yaml",
        {
            "instructor": {"pretrain": {"steps": 3, "batch_size": 4, "corpus_scenes": 2}},
            "rewards": {"tiny_clip_steps": 10},
            "sft": {
                "data": {"frames": 2, "height": 16, "width": 16},
                "optim": {"batch_size": 4, "max_steps": 120, "warmup_steps": 1},
                "eval": {"every": 120, "val_samples": 2, "sample_count": 1, "sample_steps": 2},
                "runtime": {"checkpoint_every": 10, "threads": 1},
            },
            "grpo": {
                "sampling": {"group_size": 2, "num_steps": 3, "train_steps": 1},
                "optim": {"iterations": 16, "groups_per_iteration": 1},
                "eval": {"every": 16, "groups": 2},
                "runtime": {"checkpoint_every": 2},
            },
        },
    )
    env = {
        **os.environ,
        "VIVA_CONF_DIR": str(root / "conf"),
        "DAGSTER_HOME": str(root / "home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.pop("VIVA_ENV", None)
    (root / "home").mkdir()
    for args in (
        [
            "demo-data",
            "--videos",
            "4",
            "--seed",
            "5",
            "--width",
            "64",
            "--height",
            "48",
            "--frames",
            "12",
            "--suite-per-category",
            "0",
            "--image-pair-scenes",
            "1",
        ],
        ["ingest"],
        ["materialize", "qc_dataset", "instructor_model", "reward_models"],
    ):
        done = subprocess.run(
            [str(BIN / "viva"), *args],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, env


@pytest.fixture(autouse=True)
def _nothing_left_behind(project):
    """A failed check must not leave its run holding the pool slot for the next test."""
    yield
    for pid in _processes_of(project[0]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_after_first_checkpoint(command: list[str], asset: str, root: Path, env) -> Path:
    """Run ``command``; once a checkpoint exists, SIGKILL its process group. Returns a copy
    of the run's config (taken from the trainer's command line while it runs)."""
    launched = Launched(command, env, root)
    trainer = f"-m {TRAINER[asset]} --config "
    running = _until(lambda: _processes(trainer), timeout=120)
    assert running, launched.text()[-3000:]
    config_path = running[0].split(" --config ", 1)[1].split()[0]
    config = root / f"{asset}.yaml"
    shutil.copy(config_path, config)
    checkpoint = _until(
        lambda: list((root / "data" / asset).glob("*/checkpoints/step-*/state.json")), 240, 0.05
    )
    assert checkpoint, launched.text()[-3000:]
    assert launched.process.poll() is None, "the run ended before it could be killed"
    before = _processes(config_path)
    os.killpg(launched.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    launched.wait(timeout=30)
    after = _processes(config_path)
    left = _until(lambda: not _processes(config_path) and "gone", timeout=10)
    assert left, f"still running {time.monotonic() - killed:.1f} s after the kill: " + "; ".join(
        _processes(config_path)
    )
    print(
        f"\n{' '.join(command[:3])}: killed group {launched.process.pid} after"
        f" {checkpoint[0].parent.name}; trainer processes (pid ppid session command) before:"
        f"\n  "
        + "\n  ".join(before)
        + "\nright after the kill:\n  "
        + "\n  ".join(after)
        + f"\nnone left {time.monotonic() - killed:.1f} s after the kill"
    )
    return config


def _retry(command: list[str], asset: str, root: Path, env) -> Launched:
    retry = Launched(command, env, root)
    code = retry.wait(timeout=600)
    assert code == 0, retry.text()[-4000:]
    resumed = retry.first("(resumed)")
    assert resumed is not None and resumed < 60, retry.text()[-4000:]
    line = next(line for _, line in retry.lines if "(resumed)" in line)
    print(
        f"retry: training resumed {resumed:.1f} s after the start ({line[-40:]}),"
        f" done in {time.monotonic() - retry.started:.1f} s"
    )
    return retry


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("**/*.safetensors")):
        tensors.update({f"{path.relative_to(folder)}:{k}": v for k, v in load_file(path).items()})
    assert tensors, f"no weights under {folder}"
    return tensors


def _uninterrupted(asset: str, config: Path, root: Path, env) -> dict[str, torch.Tensor]:
    """The same config run straight through, into another folder and without MLflow."""
    doc = yaml.safe_load(config.read_text())
    doc["output_prefix"] = f"uninterrupted/{asset}"
    doc["tracking"] = {}
    straight = root / f"{asset}-uninterrupted.yaml"
    straight.write_text(yaml.safe_dump(doc))
    done = subprocess.run(
        [sys.executable, "-m", TRAINER[asset], "--config", str(straight)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return _weights(root / "data" / "uninterrupted" / asset / WEIGHTS[asset])


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


DAGSTER_RUN = [
    str(BIN / "dagster"),
    "job",
    "execute",
    "-m",
    "viva_pipelines.definitions",
    "-j",
    "__ASSET_JOB",
    "-o",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "asset, through",
    # Each trainer once, each way of running once: the CLI run and the Dagster run worker
    # clean up a dead run by different code (the retry itself, `viva runs clean`).
    [("sft_checkpoint", "viva materialize"), ("grpo_lora", "dagster job execute")],
)
def test_a_killed_run_worker_leaves_no_trainer_and_the_retry_resumes(project, asset, through):
    root, env = project
    if through == "viva materialize":
        command = [str(BIN / "viva"), "materialize", asset]
        config = _kill_after_first_checkpoint(command, asset, root, env)
        retry = _retry(command, asset, root, env)
        assert "marked failed, its worker" in retry.text()  # the dead run no longer holds the slot
    else:
        # A run worker whose step runs in a subprocess of its own (the multiprocess
        # executor), as `make dev` runs do.
        command = [*DAGSTER_RUN, asset]
        config = _kill_after_first_checkpoint(command, asset, root, env)
        cleaned = subprocess.run(
            [str(BIN / "viva"), "runs", "clean"],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "marked failed, its worker" in cleaned.stdout, cleaned.stdout + cleaned.stderr
        assert "freed the slot" in cleaned.stdout
        _retry(command, asset, root, env)
    run_folder = next((root / "data" / asset).glob("*/checkpoints")).parent
    _assert_same(_weights(run_folder / WEIGHTS[asset]), _uninterrupted(asset, config, root, env))
    # The stitched-together run's history matches too (the same metrics at the same steps).
    stitched, straight = (
        json.loads((folder / "summary.json").read_text())
        for folder in (run_folder, root / "data" / "uninterrupted" / asset)
    )
    last = {key for key in straight if key.endswith("_last")}
    assert last and {k: stitched[k] for k in last} == {k: straight[k] for k in last}


@pytest.mark.slow
def test_terminating_a_dagster_run_ends_its_trainer(project):
    """What "Terminate" in the UI does: the run worker is asked to stop (SIGTERM to it alone,
    not its group); the step is interrupted, Pipes passes SIGINT to torchrun, and whatever
    survives stops with its launcher."""
    root, env = project
    for folder in (root / "data" / "sft_checkpoint").glob("*/checkpoints"):
        shutil.rmtree(folder.parent)
    launched = Launched([*DAGSTER_RUN, "sft_checkpoint"], env, root)
    running = _until(lambda: _processes("-m viva_pipelines.train.sft --config "), timeout=120)
    assert running, launched.text()[-3000:]
    config_path = running[0].split(" --config ", 1)[1].split()[0]
    launched.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert _until(lambda: not _processes(config_path) and "gone", timeout=30), _processes(
        config_path
    )
    print(f"\nterminated: trainer gone {time.monotonic() - stopped:.1f} s after SIGTERM")
    assert launched.wait(timeout=60) != 0
