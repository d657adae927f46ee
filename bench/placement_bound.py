"""The best any editor can score on the suite's added objects, and what that edit looks like.

An ``add`` or ``ref_add`` instruction names the object (or shows it) and says where as one of
nine places: the third of the frame, across and down, that holds the object's centre in the
first frame it shows. Everything else about the new object is the demo world's draw
(``demo_world.sample.random_object``): where in that ninth it starts, its size, the direction
and length of its path over the clip, its wobble and spin. So for a given source and
instruction many targets are equally likely, and the edit with the least expected squared
error, the one an editor trained on squared error learns, is their mean.

This bench estimates that mean for every ``add`` and ``ref_add`` instance of the suite: it draws
the object again from the generator, renders the scene with it, keeps the draws the suite
would have described so (the same place phrase, and the scene's most visible object, as the
suite picks the object to add) and averages ``--draws`` of them. The true object's depth order
is kept (the bound knows slightly more than an editor could). Each estimate goes through the
same MP4 encoding, normalisation and clip geometry as the suite's own files and is scored by
the benchmark's code, beside single draws (each a sharp object in a plausible place, scored
one by one and averaged), the demo's SFT model and the source unchanged. Printed: Edit / GT / BG
PSNR per model and category, and how opaque the mean draws the object inside its true region
(the share of draws that cover each pixel of it, averaged) and at its most opaque pixel.
Previews (middle frames: source, target, SFT, mean, one draw, identity) go to ``--out``.

A diagnostic, not an editor: it reads the world's generator and the suite's scenes, so its
figures bound what an editor can reach; nothing here tunes anything.

Needs what ``make demo`` leaves (the suite and the SFT model):

    DAGSTER_HOME=.dagster .venv/bin/python bench/placement_bound.py --draws 48
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from bench_common import dataset_version, note

from viva_pipelines.config.loader import load_settings
from viva_pipelines.defs.benchmark import load_configured_suite
from viva_pipelines.defs.ingest import ingest_options
from viva_pipelines.demo_world.render import render
from viva_pipelines.demo_world.sample import random_object
from viva_pipelines.demo_world.scene import SceneSpec
from viva_pipelines.demo_world.suite import SceneEdit, SuiteGeometry, local_case_scenes
from viva_pipelines.evaluation.benchmark import (
    IDENTITY,
    IdentityEditor,
    PipelineEditor,
    category_table,
    run_benchmark,
    write_report,
)
from viva_pipelines.evaluation.suite import BenchInstance
from viva_pipelines.model.clips import ClipGeometry
from viva_pipelines.model.pipeline import VivaEditPipeline
from viva_pipelines.pairs.captions import position_cell, position_phrase
from viva_pipelines.rewards.models import RECORD_KEY, load_scorers
from viva_pipelines.settings import default_conf_dir
from viva_pipelines.storage import Storage
from viva_pipelines.train.runs import instructor_location, model_key, sft_config
from viva_pipelines.video.io import write_video
from viva_pipelines.video.normalise import NormaliseSpec, decode_normalised

CATEGORIES = ("add", "ref_add")
#: Draws whose start is this far outside the named ninth are not rendered: a centre that far
#: off is not moved back into it by the frame's edge or an occluder (the exact test follows).
START_MARGIN = 0.1
#: Draws screened per draw wanted before an instance makes do with the draws it has.
MAX_SCREENS_PER_DRAW = 100
ONE_DRAW = "one draw"


@dataclass
class Placements:
    """One instance's draws: the mean target and the first ``singles`` draws, ``uint8 [T, H,
    W, 3]`` at the suite's render size; the share of draws covering each pixel of the true
    object (mean) and at the most covered pixel (peak); draws screened, rendered and kept."""

    mean: np.ndarray
    singles: list[np.ndarray]
    coverage_inside: float
    coverage_peak: float
    screened: int
    rendered: int
    kept: int


def _ninth(x: float) -> int:
    return min(2, int(3 * x))


def _plausible_start(start: tuple[float, float], row: int, col: int) -> bool:
    """Whether a centre starting at ``start`` could be described by the ninth ``(row, col)``."""
    x, y = start
    near = (
        _ninth(max(0.0, v - START_MARGIN)) <= cell <= _ninth(min(0.999, v + START_MARGIN))
        for v, cell in ((x, col), (y, row))
    )
    return all(near)


def _described(scene: SceneSpec, object_id: int, phrase: str):
    """``scene`` rendered, and where it shows ``object_id``, when the suite would add that
    object with ``phrase`` (the place of its centre, and the scene's most visible object);
    else None."""
    frames, ids = render(scene)
    shown = ids == object_id
    if not shown.any() or position_phrase(shown) != phrase:
        return None
    if any(int((ids == o.id).sum()) > int(shown.sum()) for o in scene.objects):
        return None
    return frames, shown


def draw_placements(edit: SceneEdit, draws: int, singles: int, seed: int) -> Placements:
    """Average up to ``draws`` renderings of ``edit.target`` with its object drawn again where
    the instruction allows (module doc). Each draw is screened at a quarter of the size and
    frames and rendered in full only when it passes there; the full render decides."""
    obj = edit.old
    _, true_ids = render(edit.target)
    truth = true_ids == obj.id
    phrase = position_phrase(truth)
    row, col = position_cell(truth)
    small = {
        "width": edit.target.width // 4,
        "height": edit.target.height // 4,
        "num_frames": max(2, edit.target.num_frames // 4),
    }
    rng = np.random.default_rng(seed)
    total = coverage = None
    kept_singles = []
    screened = rendered = kept = 0
    while kept < draws and screened < MAX_SCREENS_PER_DRAW * draws:
        candidate = random_object(rng, obj.entry, obj.id, obj.z)
        if not _plausible_start(candidate.trajectory.start, row, col):
            continue
        scene = edit.source.with_object_added(candidate)
        screened += 1
        if _described(dataclasses.replace(scene, **small), obj.id, phrase) is None:
            continue
        rendered += 1
        found = _described(scene, obj.id, phrase)
        if found is None:
            continue
        frames, shown = found
        kept += 1
        if total is None:
            total, coverage = np.zeros(frames.shape, np.float64), np.zeros(shown.shape)
        if len(kept_singles) < singles:
            kept_singles.append(frames)
        total += frames
        coverage += shown
    if not kept:
        raise SystemExit(f"{edit.instruction!r}: no draw in {screened} fits the instruction")
    coverage /= kept
    return Placements(
        mean=np.round(total / kept).astype(np.uint8),
        singles=kept_singles,
        coverage_inside=float(coverage[truth].mean()),
        coverage_peak=float(coverage.max()),
        screened=screened,
        rendered=rendered,
        kept=kept,
    )


def _normalised(frames: np.ndarray, fps: float, spec: NormaliseSpec) -> np.ndarray:
    """``frames`` through the suite's MP4 encoding and the benchmark's normalisation."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "clip.mp4")
        write_video(path, frames, fps)
        return decode_normalised(path, spec).frames


@dataclass
class PlacementEditor:
    """Returns an instance's precomputed mean of draws (``single`` None) or one of its draws."""

    name: str
    geometry: ClipGeometry
    spec: NormaliseSpec
    fps: float
    placements: dict[str, Placements]
    single: int | None = None

    def edit(self, media, instance: BenchInstance) -> np.ndarray:
        found = self.placements[instance.id]
        if self.single is not None and self.single >= len(found.singles):
            raise ValueError(f"{instance.id}: only {found.kept} draws fit its instruction")
        frames = found.mean if self.single is None else found.singles[self.single]
        return self.geometry.cut(_normalised(frames, self.fps, self.spec))


def _case(instance: BenchInstance, geometry: SuiteGeometry) -> SceneEdit:
    category, number = instance.id.rsplit("-", 1)
    edit = local_case_scenes(category, int(number) - 1, geometry=geometry)
    if edit.instruction != instance.instruction:
        raise SystemExit(
            f"{instance.id}: the suite on disk says {instance.instruction!r}, its scene "
            f"{edit.instruction!r}: it was rendered from another world or geometry"
        )
    return edit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=48, help="draws averaged per instance")
    parser.add_argument(
        "--singles", type=int, default=8, help="draws scored one by one (their mean printed)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="placement_bound", help="a folder for the previews and scores"
    )
    args = parser.parse_args()
    if not 1 <= args.singles <= args.draws:
        parser.error("need 1 <= --singles <= --draws")
    settings = load_settings(default_conf_dir())
    store = Storage(settings.storage.root)
    demo = settings.demo
    geometry = SuiteGeometry(demo.width, demo.height, demo.frames, demo.fps)
    media, instances = load_configured_suite(settings)
    instances = [i for i in instances if i.category in CATEGORIES]
    edits = {i.id: _case(i, geometry) for i in instances}

    placements = {}
    for instance_id, edit in edits.items():
        placements[instance_id] = found = draw_placements(edit, args.draws, args.singles, args.seed)
        note(
            f"{instance_id}: {found.kept} draws kept ({found.rendered} rendered of "
            f"{found.screened} screened)"
        )

    config = sft_config(settings, dataset_version(), instructor_location(store))
    pipeline = VivaEditPipeline.from_pretrained(store.uri(model_key(config.output_prefix)))
    spec = ingest_options(settings).spec
    model = PipelineEditor("SFT", pipeline)
    made = partial(PlacementEditor, geometry=model.geometry, spec=spec, fps=geometry.fps)
    editors = [
        model,
        made(name="mean of draws", placements=placements),
        *(made(name=f"draw {k}", placements=placements, single=k) for k in range(args.singles)),
        IdentityEditor(model.geometry),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        clip, _ = load_scorers(store, store.read_json(RECORD_KEY), tmp)
        run = run_benchmark(media, instances, editors, clip, spec, keep_clips=lambda i: True)
    # the single draws score as one model, over instances and draws; draw 0 is previewed
    singles = run.rows["model"].str.startswith("draw ")
    run.rows.loc[singles, "model"] = ONE_DRAW
    for clips in run.clips.values():
        clips[ONE_DRAW] = clips.pop("draw 0")
        for k in range(1, args.singles):
            del clips[f"draw {k}"]
        clips[IDENTITY] = clips.pop(IDENTITY)  # last, as in the benchmark's previews
    table = category_table(run.rows)

    print(
        f"\nThe suite's adds: the mean of {args.draws} draws per instance, {args.singles} "
        f"draws scored one by one (averaged), seed {args.seed}\n"
    )
    for criterion, title in (("region_psnr", "Edit PSNR"), ("target_psnr", "GT PSNR"),
                             ("bg_psnr", "BG PSNR")):  # fmt: skip
        print(f"### {title}\n")
        print(table.xs(criterion, axis=1, level=1).round(2).to_markdown())
        print()
    opacity = pd.DataFrame(
        {
            "category": [i.category for i in instances],
            "covered inside": [placements[i.id].coverage_inside for i in instances],
            "covered at most": [placements[i.id].coverage_peak for i in instances],
            "draws": [placements[i.id].kept for i in instances],
        },
        index=[i.id for i in instances],
    )
    print("### How opaque the mean draws the object (share of draws covering a pixel)\n")
    print(opacity.round(3).to_markdown())
    out = Path(args.out).resolve()
    keys = write_report(Storage(str(out.parent)), out.name, run, table)
    note(f"previews: {out.parent / keys['preview']}")


if __name__ == "__main__":
    main()
