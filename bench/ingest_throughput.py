"""Ingestion throughput: seconds per video to probe + normalise + re-encode, by source size.

    .venv/bin/python bench/ingest_throughput.py [--seconds 2] [--repeats 3]

Source clips pan across a real photo (scikit-image's astronaut), so the encoder sees realistic
content. Output uses the embedded profile's normalisation (128x128, 8 fps, 17 frames) unless overridden.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from viva_pipelines.video.io import write_video
from viva_pipelines.video.normalise import NormaliseSpec, decode_normalised

SIZES = [(320, 240), (640, 480), (1280, 720), (1920, 1080)]


def panning_clip(width: int, height: int, frames: int) -> np.ndarray:
    """``uint8 [frames, height, width, 3]``: a slow pan across an upscaled photo."""
    photo = cv2.resize(data.astronaut(), (int(width * 1.5), int(height * 1.5)))
    step = (photo.shape[1] - width) / max(frames - 1, 1)
    return np.stack(
        [photo[:height, round(i * step) : round(i * step) + width] for i in range(frames)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-size", type=int, nargs=2, default=(128, 128))
    args = parser.parse_args()
    spec = NormaliseSpec(args.out_size[0], args.out_size[1], fps=8, max_frames=17)
    frames = round(args.seconds * args.fps)
    print(
        f"{frames} source frames at {args.fps:g} fps -> {spec.width}x{spec.height}, "
        f"{spec.fps:g} fps, <= {spec.max_frames} frames; best of {args.repeats}"
    )
    print(
        f"{'source':>10} | {'MB':>6} | {'normalise s':>11} | {'encode s':>8} | {'videos/min':>10}"
    )
    print("-" * 58)
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in SIZES:
            source = Path(tmp, f"{width}x{height}.mp4")
            write_video(source, panning_clip(width, height, frames), args.fps)
            best_norm = best_enc = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                video = decode_normalised(source, spec)
                middle = time.perf_counter()
                write_video(Path(tmp, "out.mp4"), video.frames, video.fps)
                ended = time.perf_counter()
                best_norm = min(best_norm, middle - started)
                best_enc = min(best_enc, ended - middle)
            total = best_norm + best_enc
            print(
                f"{width:>4}x{height:<5} | {source.stat().st_size / 2**20:6.2f} | "
                f"{best_norm:11.3f} | {best_enc:8.3f} | {60 / total:10.0f}"
            )


if __name__ == "__main__":
    main()
