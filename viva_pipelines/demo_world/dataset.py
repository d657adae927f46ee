"""Write demo-world videos with their sidecar annotations into a folder."""

from __future__ import annotations

import json
import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from viva_pipelines.demo_world.render import render
from viva_pipelines.demo_world.sample import random_scene
from viva_pipelines.demo_world.scene import SceneSpec
from viva_pipelines.storage import Storage
from viva_pipelines.video.annotations import Annotations, sidecar_keys
from viva_pipelines.video.io import write_video
from viva_pipelines.workers import ordered_map


def scene_seed(seed: int, index: int) -> int:
    """Seed of video ``index`` of a dataset: independent streams, stable across versions."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def scene_annotations(scene: SceneSpec, masks: np.ndarray) -> Annotations:
    objects = [
        {"id": o.id, "label": o.label, "kind": o.entry.kind, "colour": o.entry.colour}
        for o in sorted(scene.objects, key=lambda o: o.id)
    ]
    return Annotations(scene.caption(), objects, masks, {"scene": scene.to_dict()})


def write_scene(scene: SceneSpec, out_dir: str | os.PathLike, name: str) -> Path:
    """Render ``scene`` to ``{out_dir}/{name}.mp4`` plus its sidecars; returns the video path.

    Sidecars are written before the video and every file appears atomically, so a sensor that
    lists the folder meanwhile never sees a video without its annotations, or half a file.
    """
    frames, masks = render(scene)
    folder = Storage(str(out_dir))
    json_key, masks_key = sidecar_keys(f"{name}.mp4")
    json_bytes, npz_bytes = scene_annotations(scene, masks).to_bytes()
    folder.write_bytes(json_key, json_bytes)
    folder.write_bytes(masks_key, npz_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp, f"{name}.mp4")
        write_video(video, frames, scene.fps)
        folder.put_file(video, f"{name}.mp4")
    return Path(folder.uri(f"{name}.mp4"))


def _write_demo_video(
    index: int,
    out_dir: str,
    seed: int,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
) -> Path:
    scene = random_scene(
        scene_seed(seed, index), width=width, height=height, num_frames=num_frames, fps=fps
    )
    return write_scene(scene, out_dir, f"scene_{index:04d}")


def generate_demo_videos(
    out_dir: str | os.PathLike,
    num_videos: int,
    seed: int,
    *,
    width: int = 320,
    height: int = 240,
    num_frames: int = 48,
    fps: float = 24,
) -> list[Path]:
    """Render ``num_videos`` random scenes as ``scene_0000.mp4``… with sidecars, one process
    per core."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_one = partial(
        _write_demo_video,
        out_dir=os.fspath(out_dir),
        seed=seed,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
    )
    return list(
        tqdm(ordered_map(write_one, range(num_videos)), total=num_videos, desc="demo videos")
    )


def demo_edit_requests(videos: list[Path], root: str | os.PathLike) -> list[dict[str, str]]:
    """Edit requests for the first demo videos, in ``viva edit --batch`` / ``edited_videos``
    form (paths relative to ``root``): remove one video's object, recolour another's, set a
    third at night, worded like the training instructions."""
    from viva_pipelines.pairs.generators import load_templates

    wordings = load_templates().instructions
    asks = [
        lambda label: wordings["remove"][0].format(object=label),
        lambda label: wordings["color"][0].format(
            object=label, colour="red" if not label.startswith("red") else "blue"
        ),
        lambda label: wordings["tone"][0].format(style="at night"),
    ]
    requests = []
    for video, ask in zip(videos, asks, strict=False):
        annotations = json.loads(video.with_suffix(".json").read_text())
        label = annotations["objects"][0]["label"] if annotations["objects"] else "object"
        requests.append(
            {
                "video": os.path.relpath(video, root).replace(os.sep, "/"),
                "instruction": ask(label),
                "out": f"{video.stem}.mp4",
            }
        )
    return requests
