"""The demo benchmark suite: instances of every category rendered from the demo world.

The demo world renders a scene from its description, so an edited description renders the
exact ground truth of an edit: the scene without the object (remove), with it (add), with the
object recoloured or swapped, with both (hybrid). Tone and style edits have no scene-level
equivalent; their targets are the OpenCV pair backend's looks, i.e. what "at night" means in
the training pairs. Reference images are cut from the target render the same way the training
pairs cut theirs (:func:`~viva_pipelines.pairs.generators.object_crop`).

Scenes come from their own seed stream (:data:`SUITE_WORLD`), never the training videos' one
(``scene_seed(demo.seed, i)``); the ``benchmark_suite`` asset's leakage check verifies it by
content anyway. Everything is a pure function of ``(world seed, per_category, geometry)``, so
``assets/benchmarks/demo.jsonl`` is reproducible and a test pins it.

Each instance ``{id}`` writes ``{id}/source.mp4``, ``{id}/target.mp4``, ``{id}/mask.npz``
(``bool [T, H, W]`` under key ``mask``: the pixels the edit may change) and, for the
reference categories, ``{id}/reference.png``.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from viva_pipelines.demo_world.dataset import scene_seed
from viva_pipelines.demo_world.render import render
from viva_pipelines.demo_world.sample import random_scene
from viva_pipelines.demo_world.scene import (
    PALETTE,
    SPRITES,
    BankEntry,
    ObjectSpec,
    SceneSpec,
    object_bank,
)
from viva_pipelines.embedded.opencv_backend import OpenCVBackend
from viva_pipelines.evaluation.suite import CATEGORIES, MANIFEST, BenchInstance
from viva_pipelines.pairs import captions
from viva_pipelines.pairs.captions import with_article
from viva_pipelines.pairs.generators import Templates, as_clause, load_templates, object_crop
from viva_pipelines.pairs.types import LOCAL_EDITS, EditPair
from viva_pipelines.storage import Storage
from viva_pipelines.video.io import write_video
from viva_pipelines.workers import ordered_map

#: Seed of the suite's scene stream; the training world uses ``demo.seed`` (0 by default).
SUITE_WORLD = 20_260_611
#: Pixels the changed region grows by, so an edit's anti-aliased rim counts as edited.
MASK_DILATION = 4
#: Local-then-global recipes of the hybrid category, used in turn.
HYBRID_RECIPES = (("color", "tone"), ("remove", "style"), ("swap", "tone"), ("remove", "color"))


@dataclass(frozen=True)
class SuiteGeometry:
    """Size and timing of the rendered clips (the demo world's raw videos by default)."""

    width: int = 320
    height: int = 240
    frames: int = 48
    fps: float = 24


def _changed(*id_maps_and_ids: tuple[np.ndarray, int]) -> np.ndarray:
    """Union of the given objects' pixels, dilated by :data:`MASK_DILATION`."""
    region = np.zeros(id_maps_and_ids[0][0].shape, bool)
    for ids, object_id in id_maps_and_ids:
        region |= ids == object_id
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * MASK_DILATION + 1,) * 2)
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in region])


def _fresh_entry(scene: SceneSpec, rng: np.random.Generator) -> BankEntry:
    """A bank object sharing no word with any object in the scene, nor cut from its photo."""
    words = {word for obj in scene.objects for word in obj.label.split()}
    candidates = [
        entry
        for entry in object_bank()
        if not set(entry.label.split()) & words
        and not (entry.kind == "sprite" and SPRITES[entry.sprite].image == scene.camera.image)
    ]
    return candidates[int(rng.integers(len(candidates)))]


def _fresh_colour(scene: SceneSpec, rng: np.random.Generator) -> str:
    used = {obj.entry.colour for obj in scene.objects}
    free = [colour for colour in PALETTE if colour not in used]
    return free[int(rng.integers(len(free)))]


@dataclass
class SceneEdit:
    """A local edit as scenes: ``old`` is the edited object (its id is kept by the edit)."""

    source: SceneSpec
    target: SceneSpec
    old: ObjectSpec
    instruction: str

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source frames, target frames and ids, edit mask): ``uint8 [T, H, W, 3]`` twice,
        ``uint8 [T, H, W]`` and ``bool [T, H, W]``."""
        source, source_ids = render(self.source)
        target, target_ids = render(self.target)
        mask = _changed((source_ids, self.old.id), (target_ids, self.old.id))
        return source, (target, target_ids), mask


def _local(
    kind: str, scene: SceneSpec, templates: Templates, rng: np.random.Generator
) -> SceneEdit:
    """A local edit of the scene's most visible object (a flat shape for ``color``, since
    sprites keep their photo colours). ``add`` is ``remove`` read backwards, as in training."""
    _, ids = render(scene)
    candidates = [o for o in scene.objects if kind != "color" or o.entry.kind != "sprite"]
    obj = max(candidates, key=lambda o: int((ids == o.id).sum()))
    label = obj.label
    if kind in ("remove", "add", "ref_add"):
        without = scene.without_object(obj.id)
        text, _ = templates.instruction(
            kind,
            rng,
            object=label,
            a_object=with_article(label),
            where=captions.position_phrase(ids == obj.id),
        )
        if kind == "remove":
            return SceneEdit(scene, without, obj, text)
        return SceneEdit(without, scene, obj, text)
    if kind == "color":
        colour = _fresh_colour(scene, rng)
        text, _ = templates.instruction(kind, rng, object=label, colour=colour)
        return SceneEdit(scene, scene.with_object_colour(obj.id, colour), obj, text)
    entry = _fresh_entry(scene, rng)  # swap / ref_swap
    text, _ = templates.instruction(
        kind,
        rng,
        object=label,
        a_object=with_article(label),
        new_object=entry.label,
        a_new_object=with_article(entry.label),
    )
    return SceneEdit(scene, scene.with_object_replaced(obj.id, entry), obj, text)


def _local_edit(
    kind: str, scene: SceneSpec, templates: Templates, rng: np.random.Generator
) -> EditPair:
    edit = _local(kind, scene, templates, rng)
    source, (target, target_ids), mask = edit.render()
    reference = None
    if kind.startswith("ref_"):
        reference = object_crop(target, target_ids == edit.old.id)
    return EditPair(
        kind,
        source,
        target,
        mask,
        edit.instruction,
        edit.source.caption(),
        edit.target.caption(),
        reference=reference,
    )


def _look(
    kind: str, frames: np.ndarray, caption: str, templates: Templates, rng: np.random.Generator
) -> tuple[str, np.ndarray, str]:
    """A ``tone`` or ``style`` look over ``frames``: (instruction, restyled frames, caption)."""
    vocabulary = templates.tones if kind == "tone" else templates.styles
    phrase = vocabulary[list(vocabulary)[int(rng.integers(len(vocabulary)))]]
    text, _ = templates.instruction(kind, rng, style=phrase)
    return text, OpenCVBackend().restyle(frames, phrase), captions.with_look(caption, phrase)


def _look_edit(
    kind: str, scene: SceneSpec, templates: Templates, rng: np.random.Generator
) -> EditPair:
    source, _ = render(scene)
    text, target, caption = _look(kind, source, scene.caption(), templates, rng)
    everything = np.ones(source.shape[:3], bool)
    return EditPair(kind, source, target, everything, text, scene.caption(), caption)


def _hybrid_edit(
    index: int, scene: SceneSpec, templates: Templates, rng: np.random.Generator
) -> EditPair:
    """A local edit, then a second one on another flat shape or a look over everything."""
    first_kind, second_kind = HYBRID_RECIPES[index % len(HYBRID_RECIPES)]
    first = _local(first_kind, scene, templates, rng)
    source, (target, _), mask = first.render()
    if second_kind == "color":
        second = _local("color", first.target, templates, rng)
        _, (target, _), second_mask = second.render()
        mask |= second_mask
        text, caption = second.instruction, second.target.caption()
    else:
        text, target, caption = _look(second_kind, target, first.target.caption(), templates, rng)
        mask[:] = True
    instruction, _ = templates.instruction(
        "hybrid", rng, first=as_clause(first.instruction), second=as_clause(text, lower=True)
    )
    return EditPair("hybrid", source, target, mask, instruction, scene.caption(), caption)


def _needs_shapes(category: str) -> bool:
    return category in ("color", "hybrid")


def _scene(category: str, index: int, world: int, geometry: SuiteGeometry) -> SceneSpec:
    """A scene for instance ``index`` of ``category``: at least two objects (removing one
    leaves a scene), and at least two flat shapes where a recolour needs one."""
    offset = CATEGORIES.index(category) * 1000 + index
    attempt = 0
    while True:
        scene = random_scene(
            scene_seed(world, offset + 100_000 * attempt),
            width=geometry.width,
            height=geometry.height,
            num_frames=geometry.frames,
            fps=geometry.fps,
            min_objects=2,
            max_objects=3,
        )
        shapes = sum(o.entry.kind != "sprite" for o in scene.objects)
        if not _needs_shapes(category) or shapes >= 2:
            return scene
        attempt += 1


def _case(
    category: str, index: int, world: int, geometry: SuiteGeometry | None
) -> tuple[SceneSpec, Templates, np.random.Generator]:
    """What instance ``index`` of ``category`` is made from: its scene, the instruction
    templates and the instance's own random stream."""
    scene = _scene(category, index, world, geometry or SuiteGeometry())
    rng = np.random.default_rng([world, CATEGORIES.index(category), index])
    return scene, load_templates(), rng


def local_case_scenes(
    category: str, index: int, *, world: int = SUITE_WORLD, geometry: SuiteGeometry | None = None
) -> SceneEdit:
    """The scenes of local instance ``index`` of ``category`` before they are rendered (what
    :func:`render_case` renders), for diagnostics that draw an instance's scene again."""
    if category not in LOCAL_EDITS:
        raise ValueError(f"{category!r} is not a local edit; local: {', '.join(LOCAL_EDITS)}")
    return _local(category, *_case(category, index, world, geometry))


def render_case(
    category: str, index: int, *, world: int = SUITE_WORLD, geometry: SuiteGeometry | None = None
) -> EditPair:
    """Instance ``index`` of ``category``, rendered (deterministic)."""
    scene, templates, rng = _case(category, index, world, geometry)
    if category in ("tone", "style"):
        return _look_edit(category, scene, templates, rng)
    if category == "hybrid":
        return _hybrid_edit(index, scene, templates, rng)
    return _local_edit(category, scene, templates, rng)


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _npz(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, mask=mask)
    return buffer.getvalue()


@dataclass(frozen=True)
class RenderedCase:
    """One suite instance as a worker hands it back: its texts and its files' bytes."""

    instance_id: str
    category: str
    instruction: str
    source_caption: str
    target_caption: str
    files: dict[str, tuple[str, bytes]]  # BenchInstance field -> (storage key, bytes)


def _video_bytes(frames: np.ndarray, fps: float) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "clip.mp4")
        write_video(path, frames, fps)
        return path.read_bytes()


def _render_case_files(case: tuple[str, int], world: int, geometry: SuiteGeometry) -> RenderedCase:
    """Render one ``(category, index)`` case and encode its files (run in a worker)."""
    category, index = case
    instance_id = f"{category}-{index + 1:02d}"
    edit = render_case(category, index, world=world, geometry=geometry)
    files = {
        "source_video": (f"{instance_id}/source.mp4", _video_bytes(edit.source, geometry.fps)),
        "target_video": (f"{instance_id}/target.mp4", _video_bytes(edit.target, geometry.fps)),
        "edit_mask": (f"{instance_id}/mask.npz", _npz(edit.mask)),
    }
    if edit.reference is not None:
        files["reference_image"] = (f"{instance_id}/reference.png", _png(edit.reference))
    return RenderedCase(
        instance_id,
        category,
        edit.instruction,
        edit.source_caption,
        edit.target_caption,
        files,
    )


def build_demo_suite(
    storage: Storage,
    *,
    per_category: int = 4,
    world: int = SUITE_WORLD,
    geometry: SuiteGeometry | None = None,
) -> list[BenchInstance]:
    """Render ``per_category`` instances of every category under ``storage`` (one process per
    core, :func:`~viva_pipelines.workers.ordered_map`) and write the manifest
    (:data:`MANIFEST`); returns the instances in manifest order."""
    geometry = geometry or SuiteGeometry()
    cases = [(category, i) for category in CATEGORIES for i in range(per_category)]
    render_one = partial(_render_case_files, world=world, geometry=geometry)
    instances = []
    for case in tqdm(ordered_map(render_one, cases), total=len(cases), desc="benchmark suite"):
        for key, data in case.files.values():
            storage.write_bytes(key, data)
        instances.append(
            BenchInstance(
                id=case.instance_id,
                category=case.category,
                instruction=case.instruction,
                source_caption=case.source_caption,
                target_caption=case.target_caption,
                **{field: key for field, (key, _) in case.files.items()},
            )
        )
    storage.write_bytes(MANIFEST, manifest_text(instances).encode())
    return instances


def manifest_text(instances: list[BenchInstance]) -> str:
    """JSONL of ``instances``: one object per line, keys sorted, nulls kept."""
    return "".join(json.dumps(asdict(i), sort_keys=True) + "\n" for i in instances)
