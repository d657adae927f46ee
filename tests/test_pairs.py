"""Synthetic edit pairs: generators over the OpenCV backend, on small demo-world clips whose
ground truth (the scene re-rendered edited) is known exactly."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import yaml

from viva_pipelines.demo_world import (
    PALETTE,
    BankEntry,
    Camera,
    ObjectSpec,
    SceneSpec,
    Trajectory,
    object_bank,
    random_scene,
    render,
)
from viva_pipelines.embedded.opencv_backend import LOOKS, OpenCVBackend, looks_in
from viva_pipelines.masks.types import TrackedObject
from viva_pipelines.pairs import captions
from viva_pipelines.pairs import generators as gen
from viva_pipelines.pairs.captions import position_phrase
from viva_pipelines.pairs.pixels import dilate_masks, recolor, rgb_to_lab
from viva_pipelines.pairs.types import EDIT_TYPES, GLOBAL_EDITS, EditPair

SMALL = {"width": 64, "height": 64, "num_frames": 8, "fps": 8}
STILL = Camera("chelsea", (0.5, 0.5, 1.0), (0.5, 0.5, 1.0))
BACKEND = OpenCVBackend()
TEMPLATES = gen.load_templates()
OPTIONS = gen.LocalOptions(dilation=2)


def shape(object_id: int, kind: str, colour: str, start, end, *, size=0.35, z=0) -> ObjectSpec:
    return ObjectSpec(object_id, BankEntry(kind, colour), size, z, Trajectory(start, end))


def crossing_scene(camera: Camera = STILL) -> SceneSpec:
    """A red square sliding across the cat photo, a blue circle drifting the other way."""
    square = shape(1, "square", "red", (0.25, 0.35), (0.75, 0.35))
    circle = shape(2, "circle", "blue", (0.7, 0.7), (0.3, 0.7), size=0.3, z=1)
    return SceneSpec(**SMALL, camera=camera, objects=(square, circle))


def clip(scene: SceneSpec) -> tuple[np.ndarray, list[TrackedObject]]:
    """Frames and exact tracked objects of a scene."""
    frames, ids = render(scene)
    return frames, [TrackedObject(o.id, o.label, ids == o.id) for o in scene.objects]


def options_for(objects: list[TrackedObject]) -> gen.LocalOptions:
    return dataclasses.replace(OPTIONS, others=tuple(objects))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def colour_fraction(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> float:
    """Fraction of ``[N, 3]`` pixels within ``tolerance`` (every channel) of ``rgb``."""
    return float((np.abs(pixels.astype(int) - rgb).max(axis=-1) <= tolerance).mean())


def hue_degrees(pixels: np.ndarray) -> np.ndarray:
    lab = rgb_to_lab(pixels)
    return np.degrees(np.arctan2(lab[:, 2], lab[:, 1]))


def sobel(frames: np.ndarray) -> np.ndarray:
    gray = frames.astype(np.float32).mean(axis=-1)
    return np.stack(
        [np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)) for g in gray]
    )


def assert_outside_unchanged(pair: EditPair) -> None:
    outside = ~pair.mask
    assert np.array_equal(pair.target[outside], pair.source[outside])


# -- remove / add -------------------------------------------------------------------------------


def test_remove_erases_the_object_recovers_the_background_and_touches_nothing_else():
    scene = crossing_scene()
    frames, objects = clip(scene)
    square = objects[0]
    pair = gen.remove(
        frames, square, scene.caption(), BACKEND, TEMPLATES, rng(), options_for(objects)
    )
    assert pair.edit_type == "remove" and pair.source is frames and pair.reference is None
    assert np.array_equal(pair.mask, dilate_masks(square.masks, 2) & ~objects[1].masks)
    assert_outside_unchanged(pair)
    assert colour_fraction(frames[square.masks], PALETTE["red"]) == 1.0
    assert colour_fraction(pair.target[pair.mask], PALETTE["red"]) < 0.01
    # The camera is still and the square never stays put: every hidden pixel is seen in some
    # frame, so the fill is the true background.
    truth, _ = render(scene.without_object(1))
    error = np.abs(pair.target.astype(int) - truth)[pair.mask]
    assert error.mean() < 2.0
    assert pair.instruction in {
        t.format(object="red square") for t in TEMPLATES.instructions["remove"]
    }
    assert pair.target_caption == scene.without_object(1).caption()
    assert pair.params["object_id"] == 1 and pair.params["dilation"] == 2
    assert pair.params["backend"] == "opencv"


def test_remove_never_bites_into_an_object_in_front():
    square = shape(1, "square", "red", (0.3, 0.5), (0.6, 0.5), size=0.4)
    circle = shape(2, "circle", "blue", (0.6, 0.45), (0.4, 0.55), size=0.3, z=1)
    scene = SceneSpec(**SMALL, camera=STILL, objects=(square, circle))
    frames, objects = clip(scene)
    front = objects[1].masks
    assert (dilate_masks(objects[0].masks, 2) & front).sum() > 50
    pair = gen.remove(
        frames, objects[0], scene.caption(), BACKEND, TEMPLATES, rng(), options_for(objects)
    )
    assert not (pair.mask & front).any()
    assert np.array_equal(pair.target[front], frames[front])
    assert colour_fraction(pair.target[pair.mask], PALETTE["blue"]) < 0.01  # nor copies it


def test_inpaint_follows_a_panning_camera():
    pan = Camera("chelsea", (0.4, 0.5, 1.0), (0.6, 0.5, 1.0))
    scene = crossing_scene(pan)
    frames, objects = clip(scene)
    truth, _ = render(scene.without_object(1))
    holes = objects[0].masks | objects[1].masks
    inside = objects[0].masks

    def error(backend: OpenCVBackend) -> float:
        return float(np.abs(backend.inpaint(frames, holes).astype(int) - truth)[inside].mean())

    aligned, unaligned = error(OpenCVBackend()), error(OpenCVBackend(align=False))
    assert aligned < 0.75 * unaligned
    assert aligned < 10


def test_inpaint_fills_what_no_frame_shows():
    still = shape(1, "star", "yellow", (0.5, 0.5), (0.5, 0.5), size=0.4)
    scene = SceneSpec(**SMALL, camera=STILL, objects=(still,))
    frames, (star,) = clip(scene)
    filled = BACKEND.inpaint(frames, star.masks)
    holes = dilate_masks(star.masks, BACKEND.dilation)
    assert np.array_equal(filled[~holes], frames[~holes])
    assert colour_fraction(filled[holes], PALETTE["yellow"]) == 0.0


@pytest.mark.parametrize("frames", [1, 130])
def test_dilate_masks_any_clip_length(frames: int):
    masks = np.zeros((frames, 9, 9), bool)
    masks[:, 4, 4] = True
    grown = dilate_masks(masks, 1)
    assert grown.shape == masks.shape and (grown.sum(axis=(1, 2)) == 5).all()


@pytest.mark.parametrize("edit_type", ["add", "ref_add"])
def test_add_is_remove_reversed(edit_type: str):
    scene = crossing_scene()
    frames, objects = clip(scene)
    options = options_for(objects)
    removed = gen.remove(frames, objects[0], scene.caption(), BACKEND, TEMPLATES, rng(), options)
    added = gen.LOCAL_GENERATORS[edit_type](
        frames, objects[0], scene.caption(), BACKEND, TEMPLATES, rng(), options
    )
    assert added.edit_type == edit_type
    assert np.array_equal(added.source, removed.target)
    assert added.target is frames
    assert np.array_equal(added.mask, removed.mask)
    assert (added.source_caption, added.target_caption) == (
        removed.target_caption,
        removed.source_caption,
    )
    if edit_type == "add":
        assert added.reference is None
        where = position_phrase(objects[0].masks)  # where the square is first seen
        assert added.instruction in {
            t.format(a_object="a red square", where=where) for t in TEMPLATES.instructions["add"]
        }
    else:  # the object on a plain white background, nothing of the scene
        reference = added.reference
        assert reference.dtype == np.uint8 and reference.ndim == 3 and reference.shape[2] == 3
        assert colour_fraction(reference.reshape(-1, 3), PALETTE["red"]) > 0.4
        others = reference[np.abs(reference.astype(int) - PALETTE["red"]).max(axis=-1) > 40]
        assert (others == 255).all()


# -- color --------------------------------------------------------------------------------------


def test_color_turns_the_object_to_another_palette_colour_and_nothing_else():
    scene = crossing_scene()
    frames, objects = clip(scene)
    square = objects[0]
    pair = gen.color(
        frames, square, scene.caption(), BACKEND, TEMPLATES, rng(3), options_for(objects)
    )
    colour = pair.params["colour"]
    assert colour in PALETTE and colour != "red" and pair.params["from_colour"] == "red"
    assert_outside_unchanged(pair)
    assert np.array_equal(pair.target[~square.masks], frames[~square.masks])
    new = pair.target[square.masks]
    if colour != "white":
        turned = hue_degrees(new) - hue_degrees(np.array([PALETTE[colour]], np.uint8))
        assert np.abs((turned + 180) % 360 - 180).max() < 5
    assert colour_fraction(new, PALETTE[colour], tolerance=12) > 0.95
    assert pair.target_caption == scene.with_object_colour(1, colour).caption()
    assert colour in pair.instruction and "red square" in pair.instruction


def test_recolor_keeps_shading_and_colours_grey_objects():
    ramp = np.linspace(60, 200, 32).astype(np.uint8)
    grey = np.repeat(np.tile(ramp, (1, 32, 1))[..., None], 3, axis=-1)  # [1, 32, 32, 3]
    mask = np.ones(grey.shape[:3], bool)
    mask[:, :, :4] = False
    out = recolor(grey, mask, PALETTE["green"])
    assert np.array_equal(out[~mask], grey[~mask])
    lightness_before = rgb_to_lab(grey[mask])[:, 0]
    lightness_after = rgb_to_lab(out[mask])[:, 0]
    assert np.corrcoef(lightness_before, lightness_after)[0, 1] > 0.99
    hsv = cv2.cvtColor(out[mask].reshape(-1, 1, 3), cv2.COLOR_RGB2HSV).reshape(-1, 3)
    assert np.median(hsv[:, 1]) > 100  # saturated: the grey object is green now
    assert (
        np.abs(hue_degrees(out[mask]) - hue_degrees(np.array([PALETTE["green"]], np.uint8))).max()
        < 5
    )


def test_color_avoids_the_objects_own_colour_when_the_label_does_not_name_it():
    scene = crossing_scene()
    frames, objects = clip(scene)
    unnamed = dataclasses.replace(objects[0], label="box")
    picked = {
        gen.color(frames, unnamed, "", BACKEND, TEMPLATES, rng(seed), OPTIONS).params["colour"]
        for seed in range(20)
    }
    assert "red" not in picked and len(picked) > 2


# -- swap ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit_type", ["swap", "ref_swap"])
def test_swap_draws_a_different_object_inside_the_mask(edit_type: str):
    scene = crossing_scene()
    frames, objects = clip(scene)
    vocabulary = dataclasses.replace(
        TEMPLATES, objects=("yellow star", "red circle", "green square")
    )
    generate = gen.LOCAL_GENERATORS[edit_type]
    pair = generate(
        frames, objects[0], scene.caption(), BACKEND, vocabulary, rng(), options_for(objects)
    )
    # Sharing no word with "red square", the only candidate is the yellow star.
    assert pair.params["new_object"] == "yellow star"
    assert_outside_unchanged(pair)
    inside = pair.target[pair.mask]
    assert colour_fraction(inside, PALETTE["red"]) < 0.01
    assert colour_fraction(inside, PALETTE["yellow"], tolerance=10) > 0.15
    assert (
        pair.target_caption == scene.with_object_replaced(1, BankEntry("star", "yellow")).caption()
    )
    if edit_type == "ref_swap":
        assert pair.reference is not None and pair.reference.dtype == np.uint8
        assert colour_fraction(pair.reference.reshape(-1, 3), PALETTE["yellow"], 10) > 0.2
    else:
        assert pair.reference is None
        assert "a yellow star" in pair.instruction


def test_render_object_paints_only_inside_the_mask():
    frames = np.full((2, 32, 32, 3), 90, np.uint8)
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 4:20, 6:22] = True
    masks[1, 10:30, 10:30] = True
    drawn = BACKEND.render_object(frames, masks, "a magenta circle")
    assert np.array_equal(drawn[~masks], frames[~masks])
    assert colour_fraction(drawn[masks], PALETTE["magenta"], 0) > 0.6
    white_card = np.full((40, 40, 3), 255, np.uint8)
    white_card[10:30, 12:28] = PALETTE["cyan"]
    pasted = BACKEND.render_object(frames, masks, "anything", reference=white_card)
    assert np.array_equal(pasted[~masks], frames[~masks])
    assert colour_fraction(pasted[masks], PALETTE["cyan"], 0) > 0.5
    assert colour_fraction(pasted[masks], (255, 255, 255), 0) == 0.0  # the card is keyed out


# -- global edits -------------------------------------------------------------------------------


def test_every_vocabulary_phrase_asks_for_its_own_look():
    vocabulary = {**TEMPLATES.tones, **TEMPLATES.styles}
    assert set(vocabulary) == set(LOOKS)
    for name, phrase in vocabulary.items():
        assert looks_in(phrase) == [name], phrase
    with pytest.raises(ValueError, match="no known look"):
        BACKEND.restyle(np.zeros((1, 8, 8, 3), np.uint8), "in the style of nothing at all")


@pytest.mark.parametrize("look", LOOKS)
def test_looks_change_the_whole_frame_and_keep_its_structure(look: str):
    frames, _ = clip(crossing_scene())
    phrase = {**TEMPLATES.tones, **TEMPLATES.styles}[look]
    out = BACKEND.restyle(frames, phrase)
    assert out.shape == frames.shape and out.dtype == np.uint8
    change = np.abs(out.astype(int) - frames)
    assert change.mean() > 10
    assert (change.max(axis=-1) > 2).mean() > 0.95  # everywhere, not just somewhere
    assert np.corrcoef(sobel(frames).ravel(), sobel(out).ravel())[0, 1] > 0.5
    assert np.array_equal(out, BACKEND.restyle(frames, phrase))  # deterministic


@pytest.mark.parametrize("edit_type", GLOBAL_EDITS)
def test_global_pairs(edit_type: str):
    scene = crossing_scene()
    frames, _ = clip(scene)
    pair = getattr(gen, edit_type)(frames, scene.caption(), BACKEND, TEMPLATES, rng())
    vocabulary = TEMPLATES.tones if edit_type == "tone" else TEMPLATES.styles
    phrase = vocabulary[pair.params["look"]]
    assert pair.mask.all() and pair.mask.shape == frames.shape[:3]
    assert phrase in pair.instruction
    assert pair.target_caption == f"{scene.caption()}, {phrase}"


# -- hybrid -------------------------------------------------------------------------------------


def test_hybrid_composes_two_edits_under_one_instruction():
    scene = crossing_scene()
    frames, objects = clip(scene)
    recipes = set()
    for seed in range(12):
        pair = gen.hybrid(
            frames, objects, scene.caption(), BACKEND, TEMPLATES, rng(seed), options_for(objects)
        )
        recipes.add(pair.params["recipe"])
        first, second = pair.params["edits"]
        assert pair.params["recipe"] == f"{first['edit_type']}+{second['edit_type']}"
        assert_outside_unchanged(pair)
        for step in (first, second):  # each edit is named by its own instruction
            template = TEMPLATES.instructions[step["edit_type"]][step["template"]]
            anchor = template.split("{")[0].strip().lower()
            assert anchor in pair.instruction.lower(), (anchor, pair.instruction)
        if second["edit_type"] in GLOBAL_EDITS:
            assert pair.mask.all()
            assert pair.target_caption.endswith(second["phrase"])
    assert len(recipes) >= 4


def test_hybrid_without_objects_still_combines_a_style_and_a_tone():
    frames, _ = clip(crossing_scene())
    pair = gen.hybrid(frames, [], "a photo of a cat", BACKEND, TEMPLATES, rng(), OPTIONS)
    assert pair.params["recipe"] == "style+tone"


# -- per video ----------------------------------------------------------------------------------


def test_generate_pairs_is_deterministic_and_covers_every_type():
    scene = crossing_scene()
    frames, objects = clip(scene)

    def run(seed: int) -> list[EditPair]:
        return gen.generate_pairs(frames, objects, scene.caption(), EDIT_TYPES, BACKEND, seed=seed)

    first, again = run(7), run(7)
    assert [p.edit_type for p in first] == list(EDIT_TYPES)
    for a, b in zip(first, again, strict=True):
        assert a.instruction == b.instruction and a.params == b.params
        assert a.target_caption == b.target_caption
        for name in ("source", "target", "mask"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
        assert (a.reference is None) == (b.reference is None)
        assert a.params["seed"] == 7 and a.params["variant"] == 0
        assert a.source.shape == a.target.shape == frames.shape and a.target.dtype == np.uint8
        assert a.mask.shape == frames.shape[:3] and a.mask.dtype == bool
        assert (a.reference is not None) == a.edit_type.startswith("ref_")
    instructions = {tuple(p.instruction for p in run(seed)) for seed in range(4)}
    assert len(instructions) > 1


def test_a_pair_does_not_depend_on_the_other_types_requested():
    scene = crossing_scene()
    frames, objects = clip(scene)
    alone = gen.generate_pairs(frames, objects, scene.caption(), ["color"], BACKEND, seed=1)
    among = gen.generate_pairs(frames, objects, scene.caption(), ["tone", "color"], BACKEND, seed=1)
    assert alone[0].instruction == among[1].instruction
    assert np.array_equal(alone[0].target, among[1].target)


def test_generate_pairs_skips_local_edits_without_usable_objects():
    scene = crossing_scene()
    frames, _ = clip(scene)
    speck = np.zeros(frames.shape[:3], bool)
    speck[0, 0, 0] = True
    unusable = [TrackedObject(9, "speck", speck)]
    for given in ([], unusable):
        pairs = gen.generate_pairs(frames, given, scene.caption(), EDIT_TYPES, BACKEND, seed=0)
        assert [p.edit_type for p in pairs] == ["style", "tone", "hybrid"]


def test_per_type_cycles_through_the_objects():
    scene = crossing_scene()
    frames, objects = clip(scene)
    pairs = gen.generate_pairs(
        frames, objects, scene.caption(), ["remove"], BACKEND, seed=0, per_type=3
    )
    ids = [p.params["object_id"] for p in pairs]
    assert [p.params["variant"] for p in pairs] == [0, 1, 2]
    assert set(ids[:2]) == {1, 2} and ids[2] == ids[0]


def test_bad_requests_fail_clearly():
    frames, objects = clip(crossing_scene())
    with pytest.raises(ValueError, match="unknown edit types"):
        gen.generate_pairs(frames, objects, "", ["recolour"], BACKEND, seed=0)
    wrong = [TrackedObject(1, "red square", objects[0].masks[:, :32])]
    with pytest.raises(ValueError, match="masks must be bool"):
        gen.generate_pairs(frames, wrong, "", ["remove"], BACKEND, seed=0)


# -- templates and captions ---------------------------------------------------------------------


def test_templates_cover_every_edit_type_with_several_wordings():
    for edit_type in EDIT_TYPES:
        assert len(TEMPLATES.instructions[edit_type]) >= 3, edit_type
    assert gen.DEFAULT_TEMPLATES.is_file()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("instructions: {remove: ['Remove the {thing}.']}", "instructions.remove"),
        ("instructions: {}\ntones: {}\n", "instructions.remove"),
    ],
)
def test_bad_templates_fail_naming_the_entry(tmp_path, text: str, error: str):
    path = tmp_path / "templates.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        gen.load_templates(path)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"colours": {"red": [255, 0, 0]}}, "colours: expected a mapping of at least 2"),
        ({"colours": {"red": [255, 0, 0], "teal": [0, 128, 300]}}, r"colours\.teal"),
        ({"colours": {"red": [255, 0, 0], "teal": "#008080"}}, r"colours\.teal"),
        ({"objects": []}, "objects: expected a list"),
        ({"objects": ["cat", ""]}, "objects: expected a list"),
    ],
)
def test_bad_vocabulary_fails_naming_the_entry(tmp_path, change: dict, error: str):
    doc = yaml.safe_load(gen.DEFAULT_TEMPLATES.read_text()) | change
    path = tmp_path / "vocabulary.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=error):
        gen.load_templates(path)


def test_the_default_vocabulary_is_what_the_demo_world_draws():
    """The demo's swaps and recolours must show objects and colours of its own world (its
    benchmark's ground truth is rendered from them); production code only reads the file."""
    assert TEMPLATES.colours == PALETTE
    assert TEMPLATES.objects == tuple(entry.label for entry in object_bank())


def test_colour_edits_paint_the_vocabulary_colours(tmp_path):
    """A production vocabulary replaces the palette: colour edits pick from it and paint it."""
    scene = crossing_scene()
    frames, objects = clip(scene)
    teal = (0, 128, 128)
    vocabulary = dataclasses.replace(TEMPLATES, colours={"red": PALETTE["red"], "teal": teal})
    pair = gen.color(frames, objects[0], scene.caption(), BACKEND, vocabulary, rng(), OPTIONS)
    assert pair.params["colour"] == "teal" and "teal" in pair.instruction
    assert colour_fraction(pair.target[pair.mask & objects[0].masks], teal, tolerance=12) > 0.9


@pytest.mark.parametrize("seed", range(12))
def test_captions_edit_the_demo_caption_like_the_scene_edits(seed: int):
    scene = random_scene(seed, **SMALL)
    caption = scene.caption()
    for obj in scene.objects:
        assert captions.without_object(caption, obj.label) == scene.without_object(obj.id).caption()
        cup = BankEntry("sprite", sprite="coffee cup")
        assert (
            captions.replaced_object(caption, obj.label, cup.label)
            == scene.with_object_replaced(obj.id, cup).caption()
        )
        if obj.entry.kind != "sprite":
            assert (
                captions.recoloured(caption, obj.label, "orange")
                == scene.with_object_colour(obj.id, "orange").caption()
            )


def test_captions_keep_case_and_articles_and_fall_back_when_the_object_is_not_named():
    assert captions.without_object("A dog and a cat play.", "dog") == "A cat play."
    assert captions.without_object("A dog runs.", "dog") == "Nothing runs."
    assert captions.replaced_object("The dog sleeps.", "dog", "owl") == "The owl sleeps."
    assert captions.recoloured("a dog", "dog", "orange") == "an orange dog"
    assert captions.recoloured_label("black dog", "yellow") == "yellow dog"
    assert captions.without_object("a beach", "dog") == "a beach, without the dog"
    assert captions.recoloured("", "dog", "red") == "a video, with the dog in red"
    assert captions.replaced_object("a beach", "dog", "owl") == (
        "a beach, with an owl instead of the dog"
    )
    assert captions.with_look("a beach", "at night") == "a beach, at night"


def test_position_phrase_says_where_by_thirds_of_the_frame():
    mask = np.zeros((2, 9, 9), bool)
    mask[1, 0:2, 7:9] = True  # empty first frame: the first frame it is seen in counts
    assert position_phrase(mask) == "at the top right"
    assert position_phrase(mask[1].T[::-1]) == "at the top left"
    centre = np.zeros((9, 9), bool)
    centre[3:6, 3:6] = True
    assert position_phrase(centre) == "in the middle"
    assert position_phrase(np.ones((9, 9), bool)) == "everywhere"
    with pytest.raises(ValueError, match="empty"):
        position_phrase(np.zeros((2, 9, 9), bool))
    # the cell a phrase names, (row, col) in thirds
    assert captions.position_cell(mask) == (0, 2)
    assert captions.position_cell(mask[1].T[::-1]) == (0, 0)
    assert captions.position_cell(centre) == (1, 1)
    with pytest.raises(ValueError, match="empty"):
        captions.position_cell(np.zeros((9, 9), bool))
