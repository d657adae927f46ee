import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from viva_pipelines.demo_world import (
    PALETTE,
    SHAPES,
    SPRITES,
    TONES,
    BankEntry,
    Camera,
    ObjectSpec,
    SceneSpec,
    Trajectory,
    generate_demo_videos,
    object_bank,
    random_scene,
    render,
)
from viva_pipelines.demo_world.sample import random_object
from viva_pipelines.video.annotations import Annotations, sidecar_keys
from viva_pipelines.video.io import read_video

SMALL = {"width": 64, "height": 48, "num_frames": 8, "fps": 8}


def overlapping_scene(**changes) -> SceneSpec:
    """A red square (behind) and a blue circle (in front) crossing, over a panning photo."""
    square = ObjectSpec(1, BankEntry("square", "red"), 0.5, 0, Trajectory((0.3, 0.5), (0.6, 0.5)))
    circle = ObjectSpec(2, BankEntry("circle", "blue"), 0.5, 1, Trajectory((0.5, 0.5), (0.4, 0.5)))
    camera = Camera("astronaut", (0.4, 0.5, 1.0), (0.6, 0.5, 1.2))
    return SceneSpec(**{**SMALL, "camera": camera, "objects": (square, circle), **changes})


def test_same_seed_same_scene_and_pixels_different_seed_different():
    a, b, c = (random_scene(s, **SMALL) for s in (7, 7, 8))
    assert a == b and a != c
    frames_a, masks_a = render(a)
    frames_b, masks_b = render(b)
    assert np.array_equal(frames_a, frames_b) and np.array_equal(masks_a, masks_b)
    assert not np.array_equal(frames_a, render(c)[0])


def test_scene_round_trips_through_json_and_rerenders_identically():
    scene = random_scene(3, **SMALL)
    again = SceneSpec.from_dict(json.loads(json.dumps(scene.to_dict())))
    assert again == scene
    assert np.array_equal(render(again)[0], render(scene)[0])


@pytest.mark.parametrize("seed", range(6))
def test_masks_match_rendered_pixels(seed: int):
    scene = random_scene(seed, **SMALL)
    frames, masks = render(scene)
    visible = set(np.unique(masks).tolist()) - {0}
    assert visible <= {o.id for o in scene.objects}
    front = max(scene.objects, key=lambda o: (o.z, o.id))
    assert (masks[0] == front.id).any(), "the front-most object is visible in the first frame"
    for obj in scene.objects:
        if obj.rgb is not None:
            assert (frames[masks == obj.id] == obj.rgb).all(), obj.label
    assert len({o.entry.kind for o in scene.objects if o.entry.kind != "sprite"}) == len(
        [o for o in scene.objects if o.entry.kind != "sprite"]
    )


def test_occlusion_gives_the_overlap_to_the_front_object():
    frames, masks = render(overlapping_scene())
    overlap = masks[0] == 2
    assert overlap.sum() > 50
    assert (frames[0][overlap] == PALETTE["blue"]).all()
    alone_square = render(overlapping_scene().without_object(2))[1][0] == 1
    hidden = alone_square & overlap
    assert hidden.sum() > 20  # part of the square is behind the circle
    assert (masks[0][hidden] == 2).all()


def test_objects_and_camera_move():
    frames, masks = render(overlapping_scene())
    xs = np.nonzero(masks[0] == 1)[1]
    xs2 = np.nonzero(masks[-1] == 1)[1]
    assert xs2.mean() - xs.mean() > 10  # the square travels right
    background = (masks[0] == 0) & (masks[-1] == 0)
    diff = np.abs(frames[0].astype(int) - frames[-1].astype(int))[background].mean()
    assert diff > 10  # the camera pans and zooms


def test_removing_an_object_reveals_what_was_behind_and_touches_nothing_else():
    scene = overlapping_scene()
    frames, masks = render(scene)
    frames_rm, masks_rm = render(scene.without_object(2))
    empty = render(scene.without_object(1).without_object(2))[0]
    assert 2 not in masks_rm
    was_circle = masks == 2
    unchanged = ~was_circle
    assert np.array_equal(frames[unchanged], frames_rm[unchanged])
    assert np.array_equal(masks[unchanged], masks_rm[unchanged])
    revealed_square = was_circle & (masks_rm == 1)
    revealed_photo = was_circle & (masks_rm == 0)
    assert revealed_square.sum() > 20 and revealed_photo.sum() > 20
    assert (frames_rm[revealed_square] == PALETTE["red"]).all()
    assert np.array_equal(frames_rm[revealed_photo], empty[revealed_photo])


@pytest.mark.parametrize("seed", range(4))
def test_mask_ids_are_exactly_the_objects_not_hidden_behind_others(seed: int):
    """Each object rendered alone gives its full silhouette; the scene's id map must show it
    exactly where no object of higher z covers it."""
    scene = random_scene(seed, **SMALL, min_objects=3, max_objects=3)
    masks = render(scene)[1]
    solo = {
        o.id: render(dataclasses.replace(scene, objects=(o,)))[1] == o.id for o in scene.objects
    }
    expected = np.zeros_like(masks)
    for obj in sorted(scene.objects, key=lambda o: (o.z, o.id)):
        expected[solo[obj.id]] = obj.id
    assert np.array_equal(masks, expected)
    for t in range(scene.num_frames):
        visible = {o.id for o in scene.objects if (expected[t] == o.id).any()}
        assert set(np.unique(masks[t]).tolist()) - {0} == visible


def test_recolour_changes_exactly_that_object():
    scene = overlapping_scene()
    frames, masks = render(scene)
    recoloured, masks_rc = render(scene.with_object_colour(1, "yellow"))
    assert np.array_equal(masks, masks_rc)
    assert np.array_equal(frames[masks != 1], recoloured[masks != 1])
    assert (recoloured[masks == 1] == PALETTE["yellow"]).all()
    with pytest.raises(ValueError):
        scene.with_object_colour(1, "mauve")


def test_swap_add_and_tone_edits():
    scene = overlapping_scene()
    cat = next(e for e in object_bank() if e.sprite == "cat")
    swapped = scene.with_object_replaced(2, cat)
    assert swapped.object(2).label == "cat" and "a cat" in swapped.caption()
    added = scene.with_object_added(
        ObjectSpec(9, BankEntry("star", "green"), 0.3, 5, Trajectory((0.8, 0.2), (0.8, 0.3)))
    )
    assert 9 in render(added)[1]
    assert "a green star" in added.caption()
    night, night_masks = render(scene.with_tone("night"))
    assert night.mean() < 0.6 * render(scene)[0].mean()
    assert np.array_equal(night_masks, render(scene)[1])
    with pytest.raises(ValueError, match="tone"):
        scene.with_tone("disco")


def test_generated_videos_decode_close_to_the_render_with_matching_sidecars(tmp_path: Path):
    paths = generate_demo_videos(tmp_path, 3, seed=5, width=128, height=96, num_frames=8, fps=8)
    assert [p.name for p in paths] == ["scene_0000.mp4", "scene_0001.mp4", "scene_0002.mp4"]
    for path in paths:
        json_path, masks_path = (Path(k) for k in sidecar_keys(str(path)))
        ann = Annotations.from_bytes(json_path.read_bytes(), masks_path.read_bytes())
        scene = SceneSpec.from_dict(ann.extra["scene"])
        frames, fps = read_video(path)
        rendered, masks = render(scene)
        assert fps == 8 and frames.shape == rendered.shape
        mse = ((frames.astype(float) - rendered) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) > 30  # H.264 at crf 12 with 4:2:0 chroma
        assert np.array_equal(ann.masks, masks)
        assert ann.caption == scene.caption()
        assert [o["label"] for o in ann.objects] == [o.label for o in scene.objects]
    again = generate_demo_videos(
        tmp_path / "again", 3, seed=5, width=128, height=96, num_frames=8, fps=8
    )
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_sampled_sprites_are_never_cut_from_the_background_photo():
    for seed in range(150):
        scene = random_scene(seed, **SMALL, sprite_probability=0.9)
        for obj in scene.objects:
            if obj.entry.kind == "sprite":
                assert SPRITES[obj.entry.sprite].image != scene.camera.image, seed


def test_random_objects_start_move_and_spin_within_the_sampler_s_law():
    rng = np.random.default_rng(0)
    shape, sprite = BankEntry("star", "red"), object_bank()[-1]
    for _ in range(200):
        obj = random_object(rng, shape, 3, 1)
        (x0, y0), (x1, y1) = obj.trajectory.start, obj.trajectory.end
        assert min(x0, y0) >= 0.2 and max(x0, y0) <= 0.8
        assert min(x1, y1) >= 0.15 and max(x1, y1) <= 0.85
        assert 0.22 <= obj.size <= 0.4 and -90 <= obj.spin <= 90
        assert (obj.id, obj.z, obj.entry) == (3, 1, shape)
    assert random_object(rng, sprite, 1, 0).spin == 0.0  # a photo sprite stays upright
    # the law is the scene sampler's: a scene's objects are such draws, in the seed's order
    starts = [o.trajectory.start for s in range(50) for o in random_scene(s, **SMALL).objects]
    assert min(min(xy) for xy in starts) >= 0.2 and max(max(xy) for xy in starts) <= 0.8


def test_sampler_and_bank_reject_impossible_requests():
    with pytest.raises(ValueError):
        random_scene(0, **SMALL, min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        random_scene(0, **SMALL, max_objects=len(SHAPES) + 1)
    with pytest.raises(ValueError):
        random_scene(0, **SMALL, sprite_probability=1.0)
    bad_entries = [("circle", "mauve"), ("blob", "red"), ("circle",), ("sprite", None, "unicorn")]
    for bad in [*bad_entries, ("sprite", "red", "cat")]:
        with pytest.raises(ValueError, match="bank"):
            BankEntry(*bad)
    assert len(set(object_bank())) == len(SHAPES) * len(PALETTE) + len(SPRITES)


def test_sprites_render_their_photo_and_tones_are_captioned():
    scene = overlapping_scene().with_object_replaced(2, BankEntry("sprite", sprite="coffee cup"))
    frames, masks = render(scene)
    cup = masks == 2
    assert cup.sum() > 100 and len(np.unique(frames[cup], axis=0)) > 50  # textured, not flat
    assert scene.caption() == "a red square and a coffee cup moving over a photo of an astronaut"
    for tone in TONES[1:]:
        assert scene.with_tone(tone).caption().startswith(scene.caption() + " ")
