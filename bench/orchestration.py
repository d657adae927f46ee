"""Orchestration at scale: the raw-video sensor's tick, the Dagster definitions' load time and
launching a backfill over many shards. CPU only; nothing is decoded or executed.

    .venv/bin/python bench/orchestration.py [--videos 10000 100000] [--shards 1000] [--quick]
        [--daemon-shards 100] [--no-daemon]

1. Sensor tick. For each count in --videos, a fresh temporary source folder gets that many
   empty ``.mp4`` files (100 sub-folders, as uploads from many cameras would land) plus one
   non-video file per folder, and a fresh storage root and Dagster instance
   (``dg.instance_for_test``). The real ``raw_video_sensor`` of ``build_definitions`` (the
   embedded-profile settings, with the source and the storage root pointed at the temp folders)
   is evaluated through ``dg.build_sensor_context`` with the Definitions' resources: it lists
   the source, assigns the new videos to shards (``ingest.shard_size`` each), writes the
   shard registry and asks for the new ``video_shards`` partitions and the first runs. The
   partition requests are then applied to the instance, as the daemon does after a tick.
   Reported: the first tick (everything new), applying its partition requests, and a second
   tick with the first one's cursor and nothing new (goal: a first tick for 100 000 videos
   under 30 s; the no-change tick fast).
2. Definitions load. ``python -c "import viva_pipelines.definitions"`` in a fresh subprocess,
   wall time, median of 3 (goal: under 3 s); also whether torch / mlflow got imported.
3. Backfill launch. A fresh instance (with a queued run coordinator, so nothing executes)
   gets --shards ``video_shards`` partitions in one ``add_dynamic_partitions`` call, then an
   asset backfill of the per-shard assets (raw_videos, tracked_masks, synthetic_pairs) over
   all of them is built (``PartitionBackfill.from_asset_partitions``) and recorded
   (``instance.add_backfill``): what the UI's "Launch backfill" does. Timed until the backfill
   is stored (not executed). Unless --no-daemon, a second row does the same for
   --daemon-shards shards and then times one iteration of the backfill daemon
   (``execute_backfill_iteration`` against a workspace loading ``viva_pipelines.definitions``
   in a code server, whose start is not timed): it creates and queues one run per shard.
   That costs about 0.5 s per run on a 2-core machine, hence the smaller backfill.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import torch
from bench_common import machine, note, table

from viva_pipelines.config import Settings, load_settings
from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.jobs import SHARD_ASSETS
from viva_pipelines.defs.partitions import video_shards
from viva_pipelines.ingest.shards import REGISTRY_KEY, shard_name
from viva_pipelines.storage import Storage

REPO = Path(__file__).resolve().parents[1]
FOLDERS = 100
#: A queued run coordinator: runs a backfill creates wait in the queue, nothing executes.
QUEUED = {
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def secs(seconds: float) -> str:
    return f"{seconds:.2f}"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_settings(tmp: Path, source: Path) -> Settings:
    return load_settings(
        REPO / "conf",
        None,
        include_local=False,
        overrides={
            "storage.root": str(tmp / "root"),
            "sources.raw_videos.uri": str(source),
            "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
        },
    )


def make_source(folder: Path, count: int) -> None:
    """``count`` empty videos in FOLDERS sub-folders, and one non-video file per folder."""
    for f in range(FOLDERS):
        sub = folder / f"cam{f:03d}"
        sub.mkdir(parents=True)
        (sub / "notes.txt").touch()
    for i in range(count):
        (folder / f"cam{i % FOLDERS:03d}" / f"clip {i:07d}.mp4").touch()


# -- 1. sensor tick ----------------------------------------------------------------------------


def sensor_case(count: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="viva-bench-sensor-") as name:
        tmp = Path(name)
        source = tmp / "incoming"
        _, made = timed(lambda: make_source(source, count))
        note(f"{count} videos: source made in {made:.1f} s")
        settings = bench_settings(tmp, source)
        defs = build_definitions(settings)
        sensor = defs.resolve_sensor_def("raw_video_sensor")
        (tmp / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp / "dagster")) as instance:

            def tick(cursor: str | None) -> dg.SensorResult:
                context = dg.build_sensor_context(
                    instance=instance, cursor=cursor, resources=defs.resources
                )
                return sensor(context)

            first, first_s = timed(lambda: tick(None))
            requests = first.dynamic_partitions_requests
            added = sum(len(r.partition_keys or []) for r in requests)

            def apply() -> None:
                for request in requests:
                    instance.add_dynamic_partitions(
                        request.partitions_def_name, list(request.partition_keys or [])
                    )

            _, apply_s = timed(apply)
            note(f"{count} videos: first tick {first_s:.2f} s, {added} partitions added")
            second, second_s = timed(lambda: tick(first.cursor))
            third, third_s = timed(lambda: tick(second.cursor))
            registry = Storage(settings.storage.root).read_parquet(REGISTRY_KEY)
            assert len(registry) == count, (len(registry), count)
            assert not second.dynamic_partitions_requests and not third.dynamic_partitions_requests
            assert len(instance.get_dynamic_partitions(video_shards.name)) == added
            note(f"{count} videos: no-change ticks {second_s:.2f} s, {third_s:.2f} s")
            return [
                f"{count:,}",
                str(settings.ingest.shard_size),
                f"{added:,}",
                secs(made),
                secs(first_s),
                secs(apply_s),
                secs(first_s + apply_s),
                str(len(first.run_requests)),
                secs(min(second_s, third_s)),
                f"{peak_rss_mib():.0f}",
            ]


# -- 2. definitions load -----------------------------------------------------------------------

LOAD = (
    "import sys, time; t = time.perf_counter(); import viva_pipelines.definitions; "
    "print(time.perf_counter() - t, 'torch' in sys.modules, 'mlflow' in sys.modules)"
)


def definitions_load(repeats: int = 3) -> list[str]:
    walls, inner, heavy = [], [], set()
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", LOAD], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.split()
        walls.append(time.perf_counter() - start)
        inner.append(float(out[0]))
        heavy.update(
            name for name, flag in zip(["torch", "mlflow"], out[1:], strict=True) if flag == "True"
        )
    note(f"definitions load: {', '.join(f'{w:.2f}' for w in walls)} s")
    return [
        secs(statistics.median(walls)),
        secs(min(walls)),
        secs(statistics.median(inner)),
        ", ".join(sorted(heavy)) or "neither",
    ]


# -- 3. backfill launch ------------------------------------------------------------------------


@contextmanager
def bench_instance(tmp: Path) -> Iterator[dg.DagsterInstance]:
    (tmp / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp / "dagster"), overrides=QUEUED) as instance:
        yield instance


def backfill_case(shards: int, daemon: bool) -> list[str]:
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    with tempfile.TemporaryDirectory(prefix="viva-bench-backfill-") as name:
        tmp = Path(name)
        settings = bench_settings(tmp, tmp / "incoming")
        defs = build_definitions(settings)
        graph = defs.resolve_asset_graph()
        keys = [dg.AssetKey(asset) for asset in SHARD_ASSETS]
        partitions = [shard_name(i) for i in range(shards)]
        with bench_instance(tmp) as instance:
            _, register_s = timed(
                lambda: instance.add_dynamic_partitions(video_shards.name, partitions)
            )

            def launch() -> str:
                backfill = PartitionBackfill.from_asset_partitions(
                    backfill_id=make_new_backfill_id(),
                    asset_graph=graph,
                    partition_names=partitions,
                    asset_selection=keys,
                    backfill_timestamp=time.time(),
                    tags={},
                    dynamic_partitions_store=instance,
                    all_partitions=False,
                    title="bench",
                    description=None,
                    run_config=None,
                )
                instance.add_backfill(backfill)
                return backfill.backfill_id

            backfill_id, launch_s = timed(launch)
            assert instance.get_backfill(backfill_id) is not None
            note(f"backfill of {shards} shards recorded in {launch_s:.2f} s")
            iteration, runs = "skipped", "-"
            if daemon:
                iteration_s, queued = daemon_iteration(instance)
                iteration, runs = secs(iteration_s), f"{queued:,}"
                note(f"one backfill daemon iteration: {iteration_s:.2f} s, {queued} runs queued")
            return [f"{shards:,}", secs(register_s), secs(launch_s), iteration, runs]


def daemon_iteration(instance: dg.DagsterInstance) -> tuple[float, int]:
    """One backfill daemon iteration against a workspace that loads the code location in a
    code server (as ``dagster-daemon`` would); the code server's start is not timed."""
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    target = ModuleTarget(
        module_name="viva_pipelines.definitions",
        attribute="defs",
        working_directory=str(REPO),
        location_name="viva_pipelines",
    )
    with create_test_daemon_workspace_context(target, instance) as context:
        context.create_request_context().get_code_location_entries()  # load before timing
        start = time.perf_counter()
        for error in execute_backfill_iteration(context, logging.getLogger("bench")):
            if error is not None:
                raise RuntimeError(error.to_string())
        elapsed = time.perf_counter() - start
    return elapsed, instance.get_runs_count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="1 000 videos, 100 shards")
    parser.add_argument("--daemon-shards", type=int, default=100)
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon iteration")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.shards, args.daemon_shards = [1000], 100, 20
    logging.getLogger("dagster").setLevel(logging.WARNING)

    print(f"{machine(torch.device('cpu'))}\n")
    print("## Sensor tick (list the source, assign shards, register partitions)\n")
    rows = [sensor_case(count) for count in args.videos]
    table(
        [
            "videos",
            "shard size",
            "new shards",
            "make files s",
            "first tick s",
            "add partitions s",
            "tick + add s",
            "runs requested",
            "no-change tick s",
            "peak RSS MiB",
        ],
        rows,
    )
    print("## Definitions load (`import viva_pipelines.definitions`, fresh process)\n")
    table(
        ["median wall s", "fastest wall s", "import only s", "heavy modules loaded"],
        [definitions_load()],
        right=0,
    )
    print("## Backfill launch (per-shard assets over dynamic partitions)\n")
    table(
        ["shards", "add partitions s", "record backfill s", "daemon iteration s", "runs queued"],
        [backfill_case(args.shards, daemon=False)]
        + ([] if args.no_daemon else [backfill_case(args.daemon_shards, daemon=True)]),
        right=0,
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
