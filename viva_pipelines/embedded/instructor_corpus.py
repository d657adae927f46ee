"""A broad corpus of demo-world scenes for pretraining the demo's tiny instructor.

A production instructor (LLaVA-LLaMA-3-8B) has read far more pictures and sentences than any
editing dataset holds before it conditions an editor. The demo's dataset has about twenty
training videos: pretrained on those alone, the tiny LLaVA learns them by heart and reads a new
scene's instruction poorly (measured in docs/benchmark.md). This corpus stands in for the
breadth of a VLM's pretraining: scenes of the same procedural world, rendered at the size
``raw_videos`` normalises to, from their own seed stream (:data:`CORPUS_WORLD`, apart from
the training videos' ``demo.seed`` stream and the benchmark suite's), edited by the same pair
generators and backend as ``synthetic_pairs``, with the exact masks and captions the renderer
knows, so no tracking is needed. Only the instructor sees it; the editing model trains on the
dataset alone.
"""

from __future__ import annotations

from viva_pipelines.demo_world.dataset import scene_seed
from viva_pipelines.demo_world.render import render
from viva_pipelines.demo_world.sample import random_scene
from viva_pipelines.embedded.opencv_backend import OpenCVBackend
from viva_pipelines.masks.types import TrackedObject
from viva_pipelines.pairs.generators import generate_pairs, load_templates
from viva_pipelines.pairs.types import EDIT_TYPES
from viva_pipelines.train.instructor import (
    GroundingExample,
    caption_examples,
    edit_examples,
    frame_picks,
    locate_examples,
)

#: Seed of the corpus's scene stream (the training videos use ``demo.seed``, the suite its own).
CORPUS_WORLD = 20_261_204
#: The corpus's frames: the size ``raw_videos`` normalises the demo's videos to.
WIDTH, HEIGHT = 128, 96
#: Frames rendered per scene (the first and the last of the motion); examples are cut from both.
FRAMES = 2


def corpus_examples(scenes: int, *, seed: int = 0) -> list[GroundingExample]:
    """Edit, caption and locate examples of ``scenes`` random demo-world scenes, each edited
    once per edit type (the corpus is broad already, so nothing is mirrored). The same
    ``(scenes, seed)`` gives the same examples."""
    backend, templates = OpenCVBackend(), load_templates()
    examples: list[GroundingExample] = []
    for index in range(scenes):
        scene_id = scene_seed(CORPUS_WORLD + seed, index)
        scene = random_scene(scene_id, width=WIDTH, height=HEIGHT, num_frames=FRAMES)
        frames, ids = render(scene)
        objects = [TrackedObject(o.id, o.label, ids == o.id) for o in scene.objects]
        caption = scene.caption()
        picks = frame_picks(len(frames), first_only=False)
        for pair in generate_pairs(
            frames, objects, caption, EDIT_TYPES, backend, seed=scene_id, templates=templates
        ):
            examples += edit_examples(
                pair.instruction,
                pair.source,
                pair.mask,
                pair.reference,
                pair.source_caption,
                pair.target_caption,
                picks,
            )
        examples += caption_examples(frames, caption, picks)
        for obj in objects:
            examples += locate_examples(obj.label, frames, obj.masks, picks)
    return examples
