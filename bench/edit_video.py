"""Whole-video editing with a trained model: speed, memory, seams.

    DAGSTER_HOME=.dagster .venv/bin/python bench/edit_video.py [--model DIR] [--minutes 10]

After ``make demo`` (the model defaults to the newest ``data/sft_checkpoint/*/model``):

- **speed**: seconds per output frame at 320x240 and 1280x720 (procedural clips);
- **memory**: peak RSS of a child process editing a procedural ``--minutes`` long 1920x1080
  input (at ``--memory-fps`` frames per second, so the bench stays minutes long: editing
  streams window by window, so memory depends on the frame size, not on the length);
- **seams**: on the demo source videos, the mean absolute frame-to-frame difference of the
  edited output across window boundaries (pairs of frames where a new window starts) against
  that within windows, next to the same ratio for the source itself.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import note, table

from viva_pipelines.model.pipeline import VivaEditPipeline
from viva_pipelines.model.whole_video import edit_whole_video, window_starts

REPO = Path(__file__).resolve().parents[1]
INSTRUCTION = "Turn the red circle blue."


def procedural(path: Path, width: int, height: int, fps: int, frames: int) -> Path:
    """A moving gradient with a bouncing disc, encoded as it is drawn (never all in memory)."""
    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(frames):
            image = np.empty((height, width, 3), np.uint8)
            image[..., 0] = (xs + 3 * t) % 256
            image[..., 1] = (ys + 2 * t) % 256
            image[..., 2] = 128
            cx = int((0.5 + 0.4 * np.sin(t / 15)) * width)
            cy = int((0.5 + 0.4 * np.cos(t / 20)) * height)
            image[(xs - cx) ** 2 + (ys - cy) ** 2 < (height // 8) ** 2] = (220, 30, 30)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def speed(pipeline: VivaEditPipeline, folder: Path) -> list[list[str]]:
    rows = []
    for width, height in ((320, 240), (1280, 720)):
        clip = procedural(folder / f"speed_{width}.mp4", width, height, 25, 48)
        for batch in (1, 4):
            started = time.perf_counter()
            result = edit_whole_video(
                pipeline, clip, INSTRUCTION, folder / "o.mp4", window_batch=batch, progress=False
            )
            seconds = time.perf_counter() - started
            rows.append(
                [
                    f"{width}x{height}",
                    str(batch),
                    str(result.frames),
                    str(result.windows),
                    f"{seconds / result.frames * 1000:.0f}",
                ]
            )
    return rows


def memory(model: Path, folder: Path, minutes: float, fps: int) -> list[str]:
    frames = int(minutes * 60 * fps)
    note(f"writing a {minutes:g}-minute 1920x1080 input at {fps} fps ({frames} frames)")
    source = procedural(folder / "long.mp4", 1920, 1080, fps, frames)
    note("editing it in a child process")
    started = time.perf_counter()
    code = (
        "import sys; from viva_pipelines.model.pipeline import VivaEditPipeline;"
        "from viva_pipelines.model.whole_video import edit_whole_video;"
        f"r = edit_whole_video(VivaEditPipeline.from_pretrained({str(model)!r}),"
        f" {str(source)!r}, {INSTRUCTION!r}, {str(folder / 'long_out.mp4')!r}, progress=False);"
        "print(r.frames)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return [
        f"{minutes:g} min, 1920x1080, {fps} fps",
        done.stdout.strip(),
        f"{time.perf_counter() - started:.0f}",
        f"{peak_mib:.0f}",
    ]


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def seams(pipeline: VivaEditPipeline, videos: list[Path], folder: Path) -> list[list[str]]:
    size = pipeline.spec.geometry.frames
    overlap = size // 2
    rows, ratios = [], []
    for video in videos:
        out = edit_whole_video(
            pipeline, video, INSTRUCTION, folder / f"{video.stem}.mp4", progress=False
        ).path
        edited, source = _frames(out).astype(np.float64), _frames(video).astype(np.float64)
        starts = set(window_starts(len(edited), size, overlap)) - {0}
        diffs = {
            name: np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))
            for name, x in (("edited", edited), ("source", source))
        }
        seam = np.array([k - 1 for k in sorted(starts)])
        inside = np.setdiff1d(np.arange(len(edited) - 1), seam)
        ratio = {n: d[seam].mean() / d[inside].mean() for n, d in diffs.items()}
        ratios.append(ratio["edited"])
        rows.append(
            [
                video.name,
                str(len(edited)),
                f"{diffs['edited'][seam].mean():.2f}",
                f"{diffs['edited'][inside].mean():.2f}",
                f"{ratio['edited']:.2f}",
                f"{ratio['source']:.2f}",
            ]
        )
    rows.append(["**mean**", "", "", "", f"**{np.mean(ratios):.2f}**", ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--memory-fps", type=int, default=2)
    parser.add_argument("--videos", type=int, default=6, help="demo source videos for seams")
    args = parser.parse_args()
    model = args.model or max(
        REPO.glob("data/sft_checkpoint/*/model"), key=lambda p: p.stat().st_mtime
    )
    pipeline = VivaEditPipeline.from_pretrained(model)
    note(f"model {model}: clips of {pipeline.spec.geometry}")
    with tempfile.TemporaryDirectory(prefix="viva-edit-bench-") as tmp:
        folder = Path(tmp)
        note("speed")
        table(
            ["size", "windows per call", "frames", "windows", "ms per output frame"],
            speed(pipeline, folder),
        )
        note("seams")
        videos = sorted(REPO.glob("data/source_videos/*.mp4"))[: args.videos]
        table(
            [
                "video",
                "frames",
                "mean abs Δ across seams",
                "mean abs Δ within windows",
                "ratio",
                "source's ratio",
            ],
            seams(pipeline, videos, folder),
        )
        table(
            ["input", "frames", "seconds", "peak RSS (MiB)"],
            [memory(model, folder, args.minutes, args.memory_fps)],
        )


if __name__ == "__main__":
    main()
