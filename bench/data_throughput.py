"""Data-construction throughput per stage, next to the floor of decoding + encoding the frames.

    .venv/bin/python bench/data_throughput.py [--repeats 3]

Clips come from the demo world (exact masks): the demo shard's size (17 frames of 128x128) and
a 256-pixel clip. The floor is what any stage pays anyway: decoding the source video and
encoding one output video of the same frames. Goal for the CPU (OpenCV) path: every stage
within 2x of that floor.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from viva_pipelines.demo_world import random_scene, render
from viva_pipelines.demo_world.dataset import scene_annotations
from viva_pipelines.embedded.opencv_backend import OpenCVBackend
from viva_pipelines.masks.shard import AnnotationsBackend
from viva_pipelines.masks.tracks import track_stats
from viva_pipelines.pairs.generators import generate_pairs
from viva_pipelines.pairs.types import EDIT_TYPES
from viva_pipelines.qc.rules import pair_metrics
from viva_pipelines.video.io import read_video, write_video

CLIPS = {"demo 128px": 128, "256px": 256}
FRAMES = 17


def best_time(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measure(size: int, repeats: int) -> dict[str, float]:
    """Seconds per clip for each stage at ``size`` x ``size``."""
    scene = random_scene(11, width=size, height=size, num_frames=FRAMES, fps=8, min_objects=2)
    frames, id_map = render(scene)
    annotations = scene_annotations(scene, id_map)
    backend, masks = OpenCVBackend(), AnnotationsBackend()
    objects = masks.track(frames, annotations, scene.caption())
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "source.mp4")
        write_video(source, frames, 8)
        timings["floor: decode + encode"] = best_time(
            lambda: write_video(Path(tmp, "out.mp4"), read_video(source)[0], 8), repeats
        )
    timings["masks (annotations + stats)"] = best_time(
        lambda: [track_stats(o.masks) for o in masks.track(frames, annotations, None)], repeats
    )
    pairs = {}
    for edit_type in EDIT_TYPES:

        def make(edit_type: str = edit_type) -> None:
            pairs[edit_type] = generate_pairs(
                frames, objects, scene.caption(), [edit_type], backend, seed=0
            )[0]

        timings[f"pairs: {edit_type}"] = best_time(make, repeats)
    pair = pairs["remove"]
    timings["qc: rule metrics"] = best_time(
        lambda: pair_metrics(pair.source, pair.target, pair.mask), repeats
    )
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {name: measure(size, args.repeats) for name, size in CLIPS.items()}
    stages = list(next(iter(results.values())))
    print(f"{FRAMES} frames per clip, OpenCV backend, best of {args.repeats}")
    header = f"{'stage':<30}" + "".join(
        f" | {name + ' fps':>14} | {'x floor':>7}" for name in CLIPS
    )
    print(header)
    print("-" * len(header))
    for stage in stages:
        cells = []
        for name in CLIPS:
            seconds, floor = results[name][stage], results[name]["floor: decode + encode"]
            cells.append(f" | {FRAMES / seconds:14.0f} | {seconds / floor:7.2f}")
        print(f"{stage:<30}" + "".join(cells))
    worst = {
        name: max(v for k, v in r.items() if not k.startswith("floor"))
        / r["floor: decode + encode"]
        for name, r in results.items()
    }
    print("slowest stage vs floor: " + ", ".join(f"{n} {w:.2f}x" for n, w in worst.items()))


if __name__ == "__main__":
    main()
