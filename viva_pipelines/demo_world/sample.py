"""Random scenes, fully determined by a seed."""

from __future__ import annotations

import math

import numpy as np

from viva_pipelines.demo_world.scene import (
    BACKGROUNDS,
    SHAPES,
    SPRITES,
    BankEntry,
    Camera,
    ObjectSpec,
    SceneSpec,
    Trajectory,
    object_bank,
)


def random_scene(
    seed: int,
    *,
    width: int = 320,
    height: int = 240,
    num_frames: int = 48,
    fps: float = 24,
    min_objects: int = 1,
    max_objects: int = 3,
    sprite_probability: float = 0.2,
) -> SceneSpec:
    """A scene with ``min_objects``..``max_objects`` objects of distinct shapes and colours.

    Centres stay inside the central 70 % of the frame, so every object starts (and stays)
    mostly in view; the front-most object is always visible in the first frame. No sprite is
    cut from the background's own photo: a cat over a photo of a cat would make "the cat"
    ambiguous to a detector and to an edit instruction.
    """
    # Objects differ in shape and colour, so at most len(SHAPES) of them fit; a sprite
    # probability of 1 could never fill a scene larger than the sprite list.
    if not 1 <= min_objects <= max_objects <= len(SHAPES):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(SHAPES)}")
    if not 0 <= sprite_probability < 1:
        raise ValueError("sprite_probability must be in [0, 1)")
    rng = np.random.default_rng(seed)
    image = str(rng.choice(sorted(BACKGROUNDS)))
    start = (rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(1.0, 1.5))
    end = (
        float(np.clip(start[0] + rng.uniform(-0.2, 0.2), 0.2, 0.8)),
        float(np.clip(start[1] + rng.uniform(-0.1, 0.1), 0.2, 0.8)),
        float(np.clip(start[2] * rng.uniform(0.85, 1.2), 1.0, 1.8)),
    )
    camera = Camera(image, tuple(float(v) for v in start), end)

    count = int(rng.integers(min_objects, max_objects + 1))
    entries = _distinct_entries(rng, count, sprite_probability, image)
    z_order = rng.permutation(count)
    objects = [
        random_object(rng, entry, index + 1, int(z_order[index]))
        for index, entry in enumerate(entries)
    ]
    return SceneSpec(width, height, num_frames, fps, camera, tuple(objects), seed=seed)


def random_object(rng: np.random.Generator, entry: BankEntry, object_id: int, z: int) -> ObjectSpec:
    """``entry`` placed and moved as :func:`random_scene` places its objects: its centre starts
    in the central 60 % of the frame and travels 0.15-0.4 of it in a random direction (kept in
    the central 70 %), with a small sideways wobble, a size of 0.22-0.4 of the frame height and,
    for a flat shape, a spin. The draws, in this order, are part of what a scene's seed makes.
    """
    x0, y0 = rng.uniform(0.2, 0.8, size=2)
    angle, distance = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.4)
    x1 = float(np.clip(x0 + distance * math.cos(angle), 0.15, 0.85))
    y1 = float(np.clip(y0 + distance * math.sin(angle), 0.15, 0.85))
    return ObjectSpec(
        id=object_id,
        entry=entry,
        size=float(rng.uniform(0.22, 0.4)),
        z=z,
        trajectory=Trajectory(
            start=(float(x0), float(y0)),
            end=(x1, y1),
            wobble=float(rng.uniform(0, 0.05)),
            wobble_periods=float(rng.uniform(0.5, 2)),
        ),
        spin=float(rng.uniform(-90, 90)) if entry.kind != "sprite" else 0.0,
    )


def _distinct_entries(
    rng: np.random.Generator, count: int, sprite_probability: float, background: str
) -> list[BankEntry]:
    """Objects no two of which share a shape, a colour or a sprite, and no sprite cut from the
    ``background`` photo."""
    bank = object_bank()
    shapes = [e for e in bank if e.kind != "sprite"]
    sprites = [e for e in bank if e.kind == "sprite"]
    chosen: list[BankEntry] = []
    while len(chosen) < count:
        pool = sprites if rng.random() < sprite_probability else shapes
        candidate = pool[int(rng.integers(len(pool)))]
        own_photo = candidate.kind == "sprite" and SPRITES[candidate.sprite].image == background
        clash = own_photo or any(
            candidate == other
            or (
                candidate.kind != "sprite"
                and (candidate.kind == other.kind or candidate.colour == other.colour)
            )
            for other in chosen
        )
        if not clash:
            chosen.append(candidate)
    return chosen
