"""A broad corpus of demo-world scenes: the demo's tiny instructor pretrains on it, and the
demo's editor gets its external image-editing pairs from it.

A production instructor (LLaVA-LLaMA-3-8B) has read far more pictures and sentences than any
editing dataset holds before it conditions an editor. The demo's dataset has about twenty
training videos: pretrained on those alone, the tiny LLaVA learns them by heart and reads a new
scene's instruction poorly (measured in docs/benchmark.md). This corpus stands in for the
breadth of a VLM's pretraining: scenes of the same procedural world, rendered small
(:data:`WIDTH` x :data:`HEIGHT`), from their own seed stream (:data:`CORPUS_WORLD`, apart from
the training videos' ``demo.seed`` stream and the benchmark suite's), edited by the same pair
generators and backend as ``synthetic_pairs``, with the exact masks and captions the renderer
knows, so no tracking is needed.

The paper mixes image-editing pairs into SFT, from the videos' frames or an external image
dataset (``qc.image_manifest``). :func:`write_image_pairs` writes the demo's external set from
a second stream (:data:`IMAGE_PAIR_WORLD`; the instructor never sees those scenes): twenty
videos show a few dozen objects in a few places, too few for the editor to learn which object
or place an instruction names (docs/benchmark.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from viva_pipelines.demo_world.dataset import scene_seed
from viva_pipelines.demo_world.render import render
from viva_pipelines.demo_world.sample import random_scene
from viva_pipelines.embedded.opencv_backend import OpenCVBackend
from viva_pipelines.masks.types import TrackedObject
from viva_pipelines.pairs.generators import Templates, generate_pairs, load_templates
from viva_pipelines.pairs.types import EDIT_TYPES, EditPair
from viva_pipelines.previews import to_png
from viva_pipelines.storage import Storage
from viva_pipelines.workers import ordered_map

if TYPE_CHECKING:
    from viva_pipelines.train.instructor import GroundingExample

#: Seed of the corpus's scene stream (the training videos use ``demo.seed``, the suite its own).
CORPUS_WORLD = 20_261_204
#: Seed of the scene stream of the demo's external image-editing pairs (apart from the above:
#: the instructor never sees the editor's image pairs, as with a VLM and a separate dataset).
IMAGE_PAIR_WORLD = 90_261_204
#: The corpus's frames: the demo videos' 4:3 at ``raw_videos``' width (training fits every
#: sample to its own size, scaling and centre-cropping, so the field of view is the videos').
WIDTH, HEIGHT = 128, 96
#: Frames rendered per scene (the first and the last of the motion); examples are cut from both.
FRAMES = 2


@dataclass(frozen=True)
class CorpusScene:
    """One rendered corpus scene: its frames (``uint8 [T, H, W, 3]``), objects with exact
    masks, caption, and one edit pair per edit type its objects allow."""

    scene_id: int
    frames: np.ndarray
    objects: list[TrackedObject]
    caption: str
    pairs: list[EditPair]


def corpus_scene(
    index: int,
    *,
    world: int = CORPUS_WORLD,
    frames: int = FRAMES,
    templates: Templates | None = None,
) -> CorpusScene:
    """Scene ``index`` of the seed stream ``world``, rendered and edited once per edit type by
    the dataset's own generators and backend (deterministic)."""
    scene_id = scene_seed(world, index)
    scene = random_scene(scene_id, width=WIDTH, height=HEIGHT, num_frames=frames)
    pixels, ids = render(scene)
    objects = [TrackedObject(o.id, o.label, ids == o.id) for o in scene.objects]
    caption = scene.caption()
    pairs = generate_pairs(
        pixels,
        objects,
        caption,
        EDIT_TYPES,
        OpenCVBackend(),
        seed=scene_id,
        templates=templates or load_templates(),
    )
    return CorpusScene(scene_id, pixels, objects, caption, pairs)


def corpus_scenes(scenes: int, *, world: int = CORPUS_WORLD, frames: int = FRAMES):
    """Yield ``scenes`` random demo-world scenes of the seed stream ``world``
    (:func:`corpus_scene`), rendered by one process per core, in order. The same arguments
    give the same scenes."""
    render_one = partial(corpus_scene, world=world, frames=frames, templates=load_templates())
    yield from ordered_map(render_one, range(scenes))


def corpus_examples(scenes: int, *, seed: int = 0) -> list[GroundingExample]:
    """Edit, caption and locate examples of ``scenes`` random demo-world scenes, each edited
    once per edit type (the corpus is broad already, so nothing is mirrored). The same
    ``(scenes, seed)`` gives the same examples."""
    # Imported here: the render workers import this module, and need no PyTorch.
    from viva_pipelines.train.instructor import (
        caption_examples,
        edit_examples,
        frame_picks,
        locate_examples,
    )

    examples: list[GroundingExample] = []
    for scene in corpus_scenes(scenes, world=CORPUS_WORLD + seed):
        picks = frame_picks(len(scene.frames), first_only=False)
        for pair in scene.pairs:
            examples += edit_examples(
                pair.instruction,
                pair.source,
                pair.mask,
                pair.reference,
                pair.source_caption,
                pair.target_caption,
                picks,
            )
        examples += caption_examples(scene.frames, scene.caption, picks)
        for obj in scene.objects:
            examples += locate_examples(obj.label, scene.frames, obj.masks, picks)
    return examples


def image_pair_files(
    index: int, *, world: int = IMAGE_PAIR_WORLD, templates: Templates | None = None
) -> list[tuple[dict[str, str], dict[str, bytes]]]:
    """The image-editing pairs of single-frame scene ``index`` of ``world``: per pair, its
    manifest entry and its PNGs by storage key (encoded here, so a worker does it)."""
    scene = corpus_scene(index, world=world, frames=1, templates=templates)
    entries = []
    for pair in scene.pairs:
        pair_id = f"{scene.scene_id}-{pair.edit_type}"
        images = {
            "source": pair.source[0],
            "target": pair.target[0],
            "mask": pair.mask[0].astype(np.uint8) * 255,
            "reference": pair.reference,
        }
        doc = {
            "id": pair_id,
            "instruction": pair.instruction,
            "edit_type": pair.edit_type,
            "source_caption": pair.source_caption,
            "target_caption": pair.target_caption,
        }
        files = {}
        for field, image in images.items():
            if image is not None:
                doc[field] = f"{pair_id}/{field}.png"
                files[doc[field]] = to_png(image)
        entries.append((doc, files))
    return entries


def write_image_pairs(
    folder: Storage, manifest: str, scenes: int, *, world: int = IMAGE_PAIR_WORLD
) -> int:
    """Write the image-editing pairs of ``scenes`` single-frame corpus scenes into ``folder``
    (rendered and encoded by one process per core): their PNGs, and the JSONL ``manifest`` in
    the format of an external image-pair manifest (``qc.image_manifest``,
    :mod:`viva_pipelines.qc.external`). Returns how many pairs."""
    render_one = partial(image_pair_files, world=world, templates=load_templates())
    lines = []
    for entries in tqdm(ordered_map(render_one, range(scenes)), total=scenes, desc="pairs"):
        for doc, files in entries:
            for key, data in files.items():
                folder.write_bytes(key, data)
            lines.append(json.dumps(doc) + "\n")
    folder.write_bytes(manifest, "".join(lines).encode())
    return len(lines)
