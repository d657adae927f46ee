"""Synthetic edit pairs from a video, its caption and its tracked objects.

One function per edit type (the VIE-Bench categories of :data:`~viva_pipelines.pairs.types.
EDIT_TYPES`), all built from three moves: take an object out (backend inpainting), put an object
in (backend rendering), change the look (backend restyling), plus an exact colour transform.
Pixels outside the edit mask are the source's, bit for bit, whatever the backend does there, so
a model trained on the pairs learns to leave them alone.

:func:`generate_pairs` is what the ``synthetic_pairs`` asset calls once per video. Everything a
pair depends on is in its ``params`` (object, colours, look, template index, dilation, backend,
seed), and the same seed gives the same pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from viva_pipelines.masks.types import TrackedObject
from viva_pipelines.pairs import captions
from viva_pipelines.pairs.captions import with_article
from viva_pipelines.pairs.pixels import check_clip, dilate_masks, recolor, rgb_to_lab
from viva_pipelines.pairs.types import EDIT_TYPES, GLOBAL_EDITS, LOCAL_EDITS, EditBackend, EditPair

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "assets" / "prompts"
DEFAULT_TEMPLATES = PROMPTS_DIR / "edit_instructions.yaml"
#: Pixels an object's mask grows by to form the edit region (``pairs.dilation`` in conf/).
DEFAULT_DILATION = 4
#: An object is worth editing when, in its largest frame, it covers this fraction of the frame.
MIN_AREA = 0.002
#: Side of the reference image drawn for ``ref_swap``.
REFERENCE_SIZE = 64
#: Palette colours closer than this (CIE76 ΔE) to an object's own colour are not offered as
#: its new colour: the edit would be invisible.
MIN_COLOUR_CHANGE = 25.0
#: What ``hybrid`` composes, in order; local steps need as many distinct objects.
HYBRID_RECIPES: tuple[tuple[str, str], ...] = (
    ("color", "tone"),
    ("remove", "tone"),
    ("swap", "tone"),
    ("color", "style"),
    ("remove", "color"),
    ("style", "tone"),
)

_TEMPLATE_FIELDS = {
    "object": "red circle",
    "a_object": "a red circle",
    "new_object": "yellow star",
    "a_new_object": "a yellow star",
    "colour": "yellow",
    "where": "at the top left",
    "style": "at night",
    "first": "Remove the red circle",
    "second": "set the video at night",
}


# -- templates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Templates:
    """The edit vocabulary: instruction wordings per edit type; the tone / style vocabularies
    (name -> phrase used in captions, instructions and as the restyle prompt); the colours
    ``color`` edits paint (name -> RGB); the objects ``swap`` edits put in (labels, which are
    also the backend's prompt)."""

    instructions: Mapping[str, tuple[str, ...]]
    tones: Mapping[str, str]
    styles: Mapping[str, str]
    colours: Mapping[str, tuple[int, int, int]]
    objects: tuple[str, ...]

    def instruction(
        self, edit_type: str, rng: np.random.Generator, **fields: str
    ) -> tuple[str, int]:
        """A wording of ``edit_type`` drawn with ``rng``, filled in; and its index."""
        options = self.instructions[edit_type]
        index = int(rng.integers(len(options)))
        return options[index].format(**fields), index


def load_templates(path: str | os.PathLike | None = None) -> Templates:
    """Read and check the templates file (default: the repository's
    ``assets/prompts/edit_instructions.yaml``); a missing edit type, an empty list, an unknown
    placeholder or a colour that is not three bytes fails here, naming it, rather than in the
    middle of a shard."""
    path = Path(path) if path is not None else DEFAULT_TEMPLATES
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping with instructions, tones and styles")
    instructions = doc.get("instructions")
    if not isinstance(instructions, dict):
        raise ValueError(f"{path}: instructions: expected a mapping of edit types to wordings")
    for edit_type in EDIT_TYPES:
        options = instructions.get(edit_type)
        if not options or not all(isinstance(o, str) for o in options):
            raise ValueError(f"{path}: instructions.{edit_type}: expected a list of strings")
        for i, option in enumerate(options):
            try:
                option.format(**_TEMPLATE_FIELDS)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{path}: instructions.{edit_type}[{i}]: {exc!r}") from exc
    vocabularies = {}
    for key in ("tones", "styles"):
        vocabulary = doc.get(key)
        if not isinstance(vocabulary, dict) or not vocabulary:
            raise ValueError(f"{path}: {key}: expected a mapping of names to phrases")
        if not all(isinstance(v, str) for v in vocabulary.values()):
            raise ValueError(f"{path}: {key}: expected a mapping of names to phrases")
        vocabularies[key] = dict(vocabulary)
    colours = doc.get("colours")
    if not isinstance(colours, dict) or len(colours) < 2:
        raise ValueError(f"{path}: colours: expected a mapping of at least 2 names to RGB")
    for name, rgb in colours.items():
        if not (isinstance(rgb, list) and len(rgb) == 3 and all(_is_byte(c) for c in rgb)):
            raise ValueError(f"{path}: colours.{name}: expected [r, g, b] in 0..255, got {rgb!r}")
    objects = doc.get("objects")
    if not objects or not all(isinstance(o, str) and o.strip() for o in objects):
        raise ValueError(f"{path}: objects: expected a list of object labels")
    return Templates(
        {k: tuple(v) for k, v in instructions.items()},
        vocabularies["tones"],
        vocabularies["styles"],
        {name: tuple(rgb) for name, rgb in colours.items()},
        tuple(objects),
    )


def _is_byte(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


@dataclass(frozen=True)
class LocalOptions:
    """How local edits are made.

    ``dilation``: pixels an object's mask grows by to form the edit region (its rim and codec
    halo go with it). ``others``: the video's tracked objects (the edited one may be among
    them), kept out of the edit region and out of what inpainting copies.
    """

    dilation: int = DEFAULT_DILATION
    others: Sequence[TrackedObject] = ()


#: ``(frames, obj, caption, backend, templates, rng, options) -> EditPair``
LocalGenerator = Callable[
    [np.ndarray, TrackedObject, str, EditBackend, Templates, np.random.Generator, LocalOptions],
    EditPair,
]


# -- shared pieces ------------------------------------------------------------------------------


def _composite(frames: np.ndarray, edited: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``edited`` inside ``region``, ``frames`` everywhere else (backends may touch more)."""
    return np.where(region[..., None], edited, frames)


def _footprint(obj: TrackedObject, options: LocalOptions) -> tuple[np.ndarray, np.ndarray]:
    """``(region, hidden)``, both ``bool [T, H, W]``. ``region``: what an edit of ``obj`` may
    change, its mask grown by ``options.dilation`` but never into another object (a removed
    object behind another must not take a bite out of it). ``hidden``: the region plus every
    other object, what an inpainting must not copy as background (they move too)."""
    region = dilate_masks(obj.masks, options.dilation)
    hidden = region.copy()
    for other in options.others:
        if other.object_id != obj.object_id:
            region &= ~other.masks | obj.masks
            hidden |= other.masks
    return region, hidden


def _without(
    frames: np.ndarray, obj: TrackedObject, backend: EditBackend, options: LocalOptions
) -> tuple[np.ndarray, np.ndarray]:
    """``(region bool [T, H, W], frames with the object inpainted away inside region)``."""
    region, hidden = _footprint(obj, options)
    return region, _composite(frames, backend.inpaint(frames, hidden), region)


def _object_params(
    obj: TrackedObject, backend: str, options: LocalOptions, template: int
) -> dict[str, Any]:
    """What every local pair records to be reproducible."""
    return {
        "object_id": obj.object_id,
        "label": obj.label,
        "dilation": options.dilation,
        "template": template,
        "backend": backend,
    }


def object_crop(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``uint8 [h, w, 3]``: the object where it is largest, cropped around its mask with a small
    margin, on a plain background (white, black for near-white objects) so the reference shows
    the object and nothing of the scene."""
    t = int(masks.sum(axis=(1, 2)).argmax())
    ys, xs = np.nonzero(masks[t])
    margin = max(2, round(0.1 * max(np.ptp(ys), np.ptp(xs))))
    h, w = masks.shape[1:]
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)
    crop = frames[t, y0:y1, x0:x1].copy()
    inside = masks[t, y0:y1, x0:x1]
    crop[~inside] = 0 if frames[t][masks[t]].mean(axis=0).min() > 200 else 255
    return crop


def reference_image(backend: EditBackend, prompt: str, size: int = REFERENCE_SIZE) -> np.ndarray:
    """``uint8 [size, size, 3]``: the backend's own rendering of ``prompt`` on a plain canvas
    (white, black for white objects), so the reference and the swapped-in object agree."""
    background = 0 if "white" in prompt.lower() else 255
    canvas = np.full((1, size, size, 3), background, np.uint8)
    box = np.zeros((1, size, size), bool)
    margin = size // 8
    box[0, margin:-margin, margin:-margin] = True
    return backend.render_object(canvas, box, prompt)[0]


# -- local edits --------------------------------------------------------------------------------
# All share one signature, (frames, obj, caption, backend, templates, rng, options), so that
# generate_pairs and hybrid can call any of them.


def _removal_pair(
    edit_type: str,
    frames: np.ndarray,
    obj: TrackedObject,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None,
) -> EditPair:
    """``remove`` and, read backwards, ``add`` / ``ref_add``: one inpainting, two directions."""
    options = options or LocalOptions()
    region, removed = _without(frames, obj, backend, options)
    fields = {
        "object": obj.label,
        "a_object": with_article(obj.label),
        "where": captions.position_phrase(obj.masks),
    }
    instruction, index = templates.instruction(edit_type, rng, **fields)
    params = _object_params(obj, backend.name, options, index)
    without = captions.without_object(caption, obj.label)
    if edit_type == "remove":
        return EditPair(edit_type, frames, removed, region, instruction, caption, without, params)
    reference = object_crop(frames, obj.masks) if edit_type == "ref_add" else None
    return EditPair(
        edit_type, removed, frames, region, instruction, without, caption, params, reference
    )


def remove(
    frames: np.ndarray,
    obj: TrackedObject,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None = None,
) -> EditPair:
    """The object inpainted away; mask: its dilated mask (see :class:`LocalOptions`)."""
    return _removal_pair("remove", frames, obj, caption, backend, templates, rng, options)


def add(
    frames: np.ndarray,
    obj: TrackedObject,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None = None,
) -> EditPair:
    """:func:`remove` reversed: the source lacks the object, the target is the real video, so
    the added object moves and is lit exactly as a real one."""
    return _removal_pair("add", frames, obj, caption, backend, templates, rng, options)


def ref_add(
    frames: np.ndarray,
    obj: TrackedObject,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None = None,
) -> EditPair:
    """:func:`add` with a reference image of the object (see :func:`object_crop`)."""
    return _removal_pair("ref_add", frames, obj, caption, backend, templates, rng, options)


def _pick_colour(
    frames: np.ndarray,
    obj: TrackedObject,
    colours: Mapping[str, tuple[int, int, int]],
    rng: np.random.Generator,
) -> str:
    """One of ``colours`` other than the one the label names and not close to the object's own
    (so "make the cat orange" is never drawn for an orange cat)."""
    named = captions.label_colour(obj.label)
    choices = [c for c in colours if c != named]
    own = rgb_to_lab(np.median(frames[obj.masks], axis=0).astype(np.uint8))[0]
    palette = rgb_to_lab(np.array([colours[c] for c in choices], np.uint8))
    distinct = np.linalg.norm(palette - own, axis=1) >= MIN_COLOUR_CHANGE
    choices = [c for c, keep in zip(choices, distinct, strict=True) if keep] or choices
    return choices[int(rng.integers(len(choices)))]


def color(
    frames: np.ndarray,
    obj: TrackedObject,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None = None,
) -> EditPair:
    """The object recoloured to another of the vocabulary's colours, shading kept (see
    :func:`~viva_pipelines.pairs.pixels.recolor`).

    Whatever the backend, the colour change is this exact pixel transform: a generative model
    would not keep the object's shape and shading, which is what makes a colour edit a colour
    edit. The backend is taken for a uniform signature only.
    """
    options = options or LocalOptions()
    colour = _pick_colour(frames, obj, templates.colours, rng)
    instruction, index = templates.instruction("color", rng, object=obj.label, colour=colour)
    params = {
        **_object_params(obj, "opencv", options, index),
        "colour": colour,
        "from_colour": captions.label_colour(obj.label),
    }
    return EditPair(
        "color",
        frames,
        recolor(frames, obj.masks, templates.colours[colour]),
        _footprint(obj, options)[0],
        instruction,
        caption,
        captions.recoloured(caption, obj.label, colour),
        params,
    )


def _words(label: str) -> set[str]:
    return set(label.lower().split())


def _swap_pair(
    edit_type: str,
    frames: np.ndarray,
    obj: TrackedObject,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None,
) -> EditPair:
    """``swap`` and ``ref_swap``: inpaint the object away, render a new one in its region.
    The new object shares no word with the old one: a red circle becomes a yellow star or a
    cat, never a yellow circle (a colour edit) nor a red square (inside the circle's mask, a
    red square is a red circle)."""
    options = options or LocalOptions()
    candidates = [n for n in templates.objects if not _words(n) & _words(obj.label)]
    if not candidates:
        raise ValueError(f"no object of the vocabulary differs from {obj.label!r}")
    new_label = candidates[int(rng.integers(len(candidates)))]
    prompt = with_article(new_label)
    region, removed = _without(frames, obj, backend, options)
    reference = reference_image(backend, prompt) if edit_type == "ref_swap" else None
    rendered = backend.render_object(removed, region, prompt, reference)
    fields = {
        "object": obj.label,
        "a_object": with_article(obj.label),
        "new_object": new_label,
        "a_new_object": prompt,
    }
    instruction, index = templates.instruction(edit_type, rng, **fields)
    return EditPair(
        edit_type,
        frames,
        _composite(frames, rendered, region),
        region,
        instruction,
        caption,
        captions.replaced_object(caption, obj.label, new_label),
        {**_object_params(obj, backend.name, options, index), "new_object": new_label},
        reference,
    )


def swap(
    frames: np.ndarray,
    obj: TrackedObject,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None = None,
) -> EditPair:
    """The object replaced, in its dilated mask, by a different one from the vocabulary's objects."""
    return _swap_pair("swap", frames, obj, caption, backend, templates, rng, options)


def ref_swap(
    frames: np.ndarray,
    obj: TrackedObject,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None = None,
) -> EditPair:
    """:func:`swap` guided by, and returned with, a reference image of the new object (see
    :func:`reference_image`)."""
    return _swap_pair("ref_swap", frames, obj, caption, backend, templates, rng, options)


#: The local generators by edit type.
LOCAL_GENERATORS: dict[str, LocalGenerator] = {
    "remove": remove,
    "add": add,
    "color": color,
    "swap": swap,
    "ref_add": ref_add,
    "ref_swap": ref_swap,
}


# -- global edits -------------------------------------------------------------------------------


def _look_pair(
    edit_type: str,
    frames: np.ndarray,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
) -> EditPair:
    """``style`` and ``tone``: a look from the templates' vocabulary over the whole frame."""
    vocabulary = templates.tones if edit_type == "tone" else templates.styles
    name = list(vocabulary)[int(rng.integers(len(vocabulary)))]
    phrase = vocabulary[name]
    instruction, index = templates.instruction(edit_type, rng, style=phrase)
    return EditPair(
        edit_type,
        frames,
        backend.restyle(frames, phrase),
        np.ones(frames.shape[:3], bool),
        instruction,
        caption,
        captions.with_look(caption, phrase),
        {"look": name, "phrase": phrase, "template": index, "backend": backend.name},
    )


def style(
    frames: np.ndarray,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
) -> EditPair:
    """The whole video re-rendered in a style from ``templates.styles`` (cartoon, sketch…)."""
    return _look_pair("style", frames, caption, backend, templates, rng)


def tone(
    frames: np.ndarray,
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
) -> EditPair:
    """The whole video's lighting, weather or season changed (``templates.tones``)."""
    return _look_pair("tone", frames, caption, backend, templates, rng)


# -- hybrid -------------------------------------------------------------------------------------


def as_clause(instruction: str, *, lower: bool = False) -> str:
    """An instruction as a clause to join with another: no final full stop, optionally with
    a lower-case first letter."""
    text = instruction.rstrip().rstrip(".")
    return text[0].lower() + text[1:] if lower and text else text


def hybrid(
    frames: np.ndarray,
    objects: Sequence[TrackedObject],
    caption: str,
    backend: EditBackend,
    templates: Templates,
    rng: np.random.Generator,
    options: LocalOptions | None = None,
) -> EditPair:
    """Two edits in one (a recipe from :data:`HYBRID_RECIPES` that ``objects`` allow, local
    steps on distinct objects): the second is applied to the first's result and caption, the
    mask is their union and one instruction names both. Without ``options``, ``objects`` are
    the objects kept out of each other's edits."""
    options = options or LocalOptions(others=tuple(objects))
    feasible = [
        recipe
        for recipe in HYBRID_RECIPES
        if sum(step in LOCAL_EDITS for step in recipe) <= len(objects)
    ]
    recipe = feasible[int(rng.integers(len(feasible)))]
    chosen = iter([objects[i] for i in rng.permutation(len(objects))])
    current, current_caption, steps = frames, caption, []
    for step in recipe:
        if step in LOCAL_GENERATORS:
            edit = LOCAL_GENERATORS[step]
            pair = edit(current, next(chosen), current_caption, backend, templates, rng, options)
        else:
            pair = _look_pair(step, current, current_caption, backend, templates, rng)
        steps.append(pair)
        current, current_caption = pair.target, pair.target_caption
    first, second = steps
    instruction, index = templates.instruction(
        "hybrid",
        rng,
        first=as_clause(first.instruction),
        second=as_clause(second.instruction, lower=True),
    )
    return EditPair(
        "hybrid",
        frames,
        current,
        first.mask | second.mask,
        instruction,
        caption,
        current_caption,
        {
            "recipe": "+".join(recipe),
            "edits": [{"edit_type": s.edit_type, **s.params} for s in steps],
            "template": index,
            "backend": backend.name,
        },
    )


# -- per video ----------------------------------------------------------------------------------


def usable_objects(
    frames: np.ndarray, objects: Sequence[TrackedObject], min_area: float = MIN_AREA
) -> list[TrackedObject]:
    """The objects worth a local edit: labelled, and covering at least ``min_area`` of the
    frame in their largest frame (a few stray pixels make no visible edit). Masks must match
    the frames."""
    usable = []
    for obj in objects:
        check_clip(frames, obj.masks)
        largest = obj.masks.sum(axis=(1, 2)).max() if len(obj.masks) else 0
        if obj.label.strip() and largest >= min_area * frames.shape[1] * frames.shape[2]:
            usable.append(obj)
    return usable


def generate_pairs(
    frames: np.ndarray,
    objects: list[TrackedObject],
    caption: str,
    edit_types: Sequence[str],
    backend: EditBackend,
    *,
    seed: int,
    templates: Templates | None = None,
    per_type: int = 1,
    dilation: int = DEFAULT_DILATION,
    min_area: float = MIN_AREA,
) -> list[EditPair]:
    """``per_type`` pairs of each of ``edit_types`` for one video (``uint8 [T, H, W, 3]``).

    Local edits cycle through the usable objects (see :func:`usable_objects`) in a seeded
    order and are skipped, without error, when there is none. Each edit type draws from its own
    random stream (``[seed, type]``), so a pair does not change when other types are added or
    removed; the same seed always gives the same pairs. ``params`` gets ``seed`` and
    ``variant`` (0 .. per_type - 1) on top of what the generator records.
    """
    check_clip(frames)
    unknown = [t for t in edit_types if t not in EDIT_TYPES]
    if unknown:
        raise ValueError(f"unknown edit types {unknown}; known: {', '.join(EDIT_TYPES)}")
    templates = templates or load_templates()
    usable = usable_objects(frames, objects, min_area)
    options = LocalOptions(dilation, tuple(objects))
    pairs = []
    for edit_type in dict.fromkeys(edit_types):
        rng = np.random.default_rng([seed, EDIT_TYPES.index(edit_type)])
        if edit_type in LOCAL_EDITS:
            if not usable:
                continue
            order = rng.permutation(len(usable))
        for variant in range(per_type):
            if edit_type in LOCAL_EDITS:
                obj = usable[order[variant % len(usable)]]
                edit = LOCAL_GENERATORS[edit_type]
                pair = edit(frames, obj, caption, backend, templates, rng, options)
            elif edit_type in GLOBAL_EDITS:
                pair = _look_pair(edit_type, frames, caption, backend, templates, rng)
            else:
                pair = hybrid(frames, usable, caption, backend, templates, rng, options)
            pair.params.update(seed=seed, variant=variant)
            pairs.append(pair)
    return pairs
