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
    with_article,
)
from viva_pipelines.evaluation.suite import CATEGORIES, BenchInstance
from viva_pipelines.pairs import captions
from viva_pipelines.pairs.generators import Templates, as_clause, load_templates, object_crop
from viva_pipelines.pairs.opencv_backend import OpenCVBackend
from viva_pipelines.storage import Storage
from viva_pipelines.video.io import write_video

#: Seed of the suite's scene stream; the training world uses ``demo.seed`` (0 by default).
SUITE_WORLD = 20_260_611
#: Pixels the changed region grows by, so an edit's anti-aliased rim counts as edited.
MASK_DILATION = 4
#: Local-then-global recipes of the hybrid category, used in turn.
HYBRID_RECIPES = (("color", "tone"), ("remove", "style"), ("swap", "tone"), ("remove", "color"))
#: Manifest key of a rendered suite, relative to its root.
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class SuiteGeometry:
    """Size and timing of the rendered clips (the demo world's raw videos by default)."""

    width: int = 320
    height: int = 240
    frames: int = 48
    fps: float = 24


@dataclass
class _Edit:
    """One rendered edit before it is written: frames are ``uint8 [T, H, W, 3]``."""

    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    instruction: str
    source_caption: str
    target_caption: str
    reference: np.ndarray | None = None


def _largest(scene: SceneSpec, ids: np.ndarray) -> ObjectSpec:
    """The object with the most visible pixels: the edit a viewer can see best."""
    return max(scene.objects, key=lambda obj: int((ids == obj.id).sum()))


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


def _local(
    kind: str, scene: SceneSpec, templates: Templates, rng: np.random.Generator
) -> tuple[SceneSpec, SceneSpec, ObjectSpec, ObjectSpec | None, str, str, str]:
    """A local edit as (source scene, target scene, old object, new object, instruction,
    source caption, target caption). ``add`` is ``remove`` read backwards, as in training."""
    _, ids = render(scene)
    obj = _largest(scene, ids)
    label = obj.label
    if kind in ("remove", "add", "ref_add"):
        without = scene.without_object(obj.id)
        text, _ = templates.instruction(kind, rng, object=label, a_object=with_article(label))
        if kind == "remove":
            return scene, without, obj, None, text, scene.caption(), without.caption()
        return without, scene, obj, obj, text, without.caption(), scene.caption()
    if kind == "color":
        if obj.entry.kind == "sprite":  # sprites keep their photo colours: pick a shape
            obj = max(
                (o for o in scene.objects if o.entry.kind != "sprite"),
                key=lambda o: int((ids == o.id).sum()),
            )
            label = obj.label
        colour = _fresh_colour(scene, rng)
        target = scene.with_object_colour(obj.id, colour)
        text, _ = templates.instruction(kind, rng, object=label, colour=colour)
        return scene, target, obj, target.object(obj.id), text, scene.caption(), target.caption()
    entry = _fresh_entry(scene, rng)  # swap / ref_swap
    target = scene.with_object_replaced(obj.id, entry)
    text, _ = templates.instruction(
        kind,
        rng,
        object=label,
        a_object=with_article(label),
        new_object=entry.label,
        a_new_object=with_article(entry.label),
    )
    return scene, target, obj, target.object(obj.id), text, scene.caption(), target.caption()


def _local_edit(kind: str, scene: SceneSpec, templates: Templates, rng) -> _Edit:
    source_scene, target_scene, old, new, text, src_caption, tgt_caption = _local(
        kind, scene, templates, rng
    )
    source, source_ids = render(source_scene)
    target, target_ids = render(target_scene)
    mask = _changed((source_ids, old.id), (target_ids, old.id))
    reference = None
    if kind.startswith("ref_"):
        reference = object_crop(target, target_ids == new.id)
    return _Edit(source, target, mask, text, src_caption, tgt_caption, reference)


def _look(kind: str, templates: Templates, rng: np.random.Generator) -> str:
    vocabulary = templates.tones if kind == "tone" else templates.styles
    return vocabulary[list(vocabulary)[int(rng.integers(len(vocabulary)))]]


def _look_edit(kind: str, scene: SceneSpec, templates: Templates, rng) -> _Edit:
    phrase = _look(kind, templates, rng)
    source, _ = render(scene)
    text, _ = templates.instruction(kind, rng, style=phrase)
    target = OpenCVBackend().restyle(source, phrase)
    caption = scene.caption()
    return _Edit(
        source,
        target,
        np.ones(source.shape[:3], bool),
        text,
        caption,
        captions.with_look(caption, phrase),
    )


def _hybrid_edit(index: int, scene: SceneSpec, templates: Templates, rng) -> _Edit:
    first_kind, second_kind = HYBRID_RECIPES[index % len(HYBRID_RECIPES)]
    source_scene, target_scene, old, _, first, src_caption, tgt_caption = _local(
        first_kind, scene, templates, rng
    )
    source, source_ids = render(source_scene)
    _, target_ids = render(target_scene)
    mask = _changed((source_ids, old.id), (target_ids, old.id))
    if second_kind == "color":  # a second local edit, on another object of the edited scene
        others = [o for o in target_scene.objects if o.entry.kind != "sprite"]
        obj = max(others, key=lambda o: int((target_ids == o.id).sum()))
        colour = _fresh_colour(target_scene, rng)
        second, _ = templates.instruction("color", rng, object=obj.label, colour=colour)
        target_scene = target_scene.with_object_colour(obj.id, colour)
        tgt_caption = target_scene.caption()
        target, final_ids = render(target_scene)
        mask |= _changed((target_ids, obj.id), (final_ids, obj.id))
    else:
        phrase = _look(second_kind, templates, rng)
        second, _ = templates.instruction(second_kind, rng, style=phrase)
        target = OpenCVBackend().restyle(render(target_scene)[0], phrase)
        tgt_caption = captions.with_look(tgt_caption, phrase)
        mask[:] = True
    text, _ = templates.instruction(
        "hybrid", rng, first=as_clause(first), second=as_clause(second, lower=True)
    )
    return _Edit(source, target, mask, text, src_caption, tgt_caption)


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


def render_case(
    category: str, index: int, *, world: int = SUITE_WORLD, geometry: SuiteGeometry | None = None
) -> _Edit:
    """Instance ``index`` of ``category``, rendered (deterministic)."""
    geometry = geometry or SuiteGeometry()
    scene = _scene(category, index, world, geometry)
    rng = np.random.default_rng([world, CATEGORIES.index(category), index])
    templates = load_templates()
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


def _write_case(storage: Storage, instance_id: str, edit: _Edit, fps: float) -> dict[str, str]:
    keys = {
        "source_video": f"{instance_id}/source.mp4",
        "target_video": f"{instance_id}/target.mp4",
        "edit_mask": f"{instance_id}/mask.npz",
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, frames in (("source_video", edit.source), ("target_video", edit.target)):
            local = Path(tmp, Path(keys[name]).name)
            write_video(local, frames, fps)
            storage.put_file(local, keys[name])
    storage.write_bytes(keys["edit_mask"], _npz(edit.mask))
    if edit.reference is not None:
        keys["reference_image"] = f"{instance_id}/reference.png"
        storage.write_bytes(keys["reference_image"], _png(edit.reference))
    return keys


def build_demo_suite(
    storage: Storage,
    *,
    per_category: int = 4,
    world: int = SUITE_WORLD,
    geometry: SuiteGeometry | None = None,
) -> list[BenchInstance]:
    """Render ``per_category`` instances of every category under ``storage`` and write the
    manifest (:data:`MANIFEST`); returns the instances in manifest order."""
    geometry = geometry or SuiteGeometry()
    instances = []
    cases = [(category, i) for category in CATEGORIES for i in range(per_category)]
    for category, index in tqdm(cases, desc="benchmark suite"):
        instance_id = f"{category}-{index + 1:02d}"
        edit = render_case(category, index, world=world, geometry=geometry)
        keys = _write_case(storage, instance_id, edit, geometry.fps)
        instances.append(
            BenchInstance(
                id=instance_id,
                category=category,
                instruction=edit.instruction,
                source_caption=edit.source_caption,
                target_caption=edit.target_caption,
                **keys,
            )
        )
    storage.write_bytes(MANIFEST, manifest_text(instances).encode())
    return instances


def manifest_text(instances: list[BenchInstance]) -> str:
    """JSONL of ``instances``: one object per line, keys sorted, nulls kept."""
    return "".join(json.dumps(asdict(i), sort_keys=True) + "\n" for i in instances)
