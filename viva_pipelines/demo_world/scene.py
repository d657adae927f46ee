"""The demo world's scene description: plain, JSON-round-trippable data.

A scene is a camera moving over a real photograph with a few objects (flat-coloured shapes or
sprites cut from photos) moving in front of it. Rendering is a pure function of this
description (:mod:`viva_pipelines.demo_world.render`), so an edited description — an object
removed, recoloured, swapped or added, a new tone — renders the ground-truth edited video of
the same scene.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from viva_pipelines.pairs.captions import with_article

#: Well-separated colours, so "the red object" is never ambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "magenta": (210, 40, 200),
    "cyan": (30, 200, 215),
    "orange": (250, 130, 20),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond")

#: Colour photographs that ship inside scikit-image (no download), and what they show.
BACKGROUNDS: dict[str, str] = {
    "astronaut": "an astronaut",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket on a launch pad",
    "hubble_deep_field": "a starry sky",
    "immunohistochemistry": "stained tissue",
    "retina": "a retina",
}


@dataclass(frozen=True)
class SpriteSource:
    """A cut-out of a photo: an elliptical region of ``image`` inside the box (rows, cols)."""

    image: str
    top: int
    bottom: int
    left: int
    right: int
    label: str


SPRITES: dict[str, SpriteSource] = {
    "cat": SpriteSource("chelsea", 10, 250, 120, 330, "cat"),
    "coffee cup": SpriteSource("coffee", 20, 330, 90, 490, "coffee cup"),
    "rocket": SpriteSource("rocket", 115, 410, 296, 346, "rocket"),
    "astronaut helmet": SpriteSource("astronaut", 345, 512, 280, 508, "astronaut helmet"),
}

TONES = ("normal", "night", "sepia", "snow", "sunset")
#: How a caption says the tone, so an edited scene's caption describes its look.
TONE_PHRASES = {
    "night": "at night",
    "sepia": "in sepia",
    "snow": "in the snow",
    "sunset": "at sunset",
}


@dataclass(frozen=True)
class BankEntry:
    """What an object looks like, independent of where it is: a shape+colour or a sprite."""

    kind: str  # a name in SHAPES, or "sprite"
    colour: str | None = None
    sprite: str | None = None

    def __post_init__(self) -> None:
        # Checked here rather than at render time so that a bad "swap"/"add" edit fails where
        # it is made, not deep inside a renderer or a backend.
        if self.kind == "sprite":
            valid = self.sprite in SPRITES and self.colour is None
        else:
            valid = self.kind in SHAPES and self.colour in PALETTE and self.sprite is None
        if not valid:
            raise ValueError(f"not an object of the bank: {self}")

    @property
    def label(self) -> str:
        return self.sprite if self.kind == "sprite" else f"{self.colour} {self.kind}"


def object_bank() -> list[BankEntry]:
    """Every object the world can draw; "add" and "swap" edits pick new objects from here."""
    shapes = [BankEntry(shape, colour) for shape in SHAPES for colour in PALETTE]
    return shapes + [BankEntry("sprite", sprite=name) for name in SPRITES]


@dataclass(frozen=True)
class Trajectory:
    """Centre path in normalised frame coordinates (x right, y down, both in [0, 1])."""

    start: tuple[float, float]
    end: tuple[float, float]
    wobble: float = 0.0  # amplitude of a sideways sine, normalised
    wobble_periods: float = 1.0

    def position(self, u: float) -> tuple[float, float]:
        """Centre at clip time ``u`` ∈ [0, 1]."""
        (x0, y0), (x1, y1) = self.start, self.end
        dx, dy = x1 - x0, y1 - y0
        norm = math.hypot(dx, dy) or 1.0
        side = self.wobble * math.sin(2 * math.pi * self.wobble_periods * u)
        return x0 + u * dx - side * dy / norm, y0 + u * dy + side * dx / norm


@dataclass(frozen=True)
class ObjectSpec:
    id: int  # 1..255, its value in the mask id map
    entry: BankEntry
    size: float  # bounding size as a fraction of the frame height
    z: int  # higher is in front
    trajectory: Trajectory
    spin: float = 0.0  # degrees turned over the clip

    @property
    def label(self) -> str:
        return self.entry.label

    @property
    def rgb(self) -> tuple[int, int, int] | None:
        return PALETTE[self.entry.colour] if self.entry.colour else None


@dataclass(frozen=True)
class Camera:
    """Crop of the background photo: normalised centre and zoom (1 = the largest crop of the
    frame's aspect), moving linearly from ``start`` to ``end`` over the clip."""

    image: str
    start: tuple[float, float, float]  # (cx, cy, zoom)
    end: tuple[float, float, float]

    def at(self, u: float) -> tuple[float, float, float]:
        return tuple(a + u * (b - a) for a, b in zip(self.start, self.end, strict=True))


@dataclass(frozen=True)
class SceneSpec:
    width: int
    height: int
    num_frames: int
    fps: float
    camera: Camera
    objects: tuple[ObjectSpec, ...]
    tone: str = "normal"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        ids = [obj.id for obj in self.objects]
        if len(set(ids)) != len(ids) or any(not 0 < i < 256 for i in ids):
            raise ValueError(f"object ids must be distinct and in 1..255, got {ids}")
        if self.tone not in TONES:
            raise ValueError(f"unknown tone {self.tone!r}; known: {', '.join(TONES)}")
        if self.camera.image not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.camera.image!r}")

    # -- description -------------------------------------------------------------------------
    def object(self, object_id: int) -> ObjectSpec:
        for obj in self.objects:
            if obj.id == object_id:
                return obj
        raise KeyError(f"scene has no object {object_id}")

    def caption(self) -> str:
        """E.g. "a red circle and a cat moving over a photo of a cup of coffee"."""
        names = [with_article(obj.label) for obj in sorted(self.objects, key=lambda o: o.id)]
        if not names:
            things = "nothing"
        elif len(names) == 1:
            things = names[0]
        else:
            things = ", ".join(names[:-1]) + " and " + names[-1]
        tone = f" {TONE_PHRASES[self.tone]}" if self.tone in TONE_PHRASES else ""
        return f"{things} moving over a photo of {BACKGROUNDS[self.camera.image]}{tone}"

    # -- edits (each returns a new scene) ----------------------------------------------------
    def without_object(self, object_id: int) -> SceneSpec:
        self.object(object_id)
        kept = tuple(obj for obj in self.objects if obj.id != object_id)
        return dataclasses.replace(self, objects=kept)

    def with_object_colour(self, object_id: int, colour: str) -> SceneSpec:
        obj = self.object(object_id)
        if obj.entry.kind == "sprite" or colour not in PALETTE:
            raise ValueError(f"cannot recolour {obj.label!r} to {colour!r}")
        return self._replace_object(obj, entry=dataclasses.replace(obj.entry, colour=colour))

    def with_object_replaced(self, object_id: int, entry: BankEntry) -> SceneSpec:
        return self._replace_object(self.object(object_id), entry=entry)

    def with_object_added(self, obj: ObjectSpec) -> SceneSpec:
        return dataclasses.replace(self, objects=(*self.objects, obj))

    def with_tone(self, tone: str) -> SceneSpec:
        return dataclasses.replace(self, tone=tone)

    def _replace_object(self, obj: ObjectSpec, **changes: Any) -> SceneSpec:
        new = dataclasses.replace(obj, **changes)
        return dataclasses.replace(
            self, objects=tuple(new if o is obj else o for o in self.objects)
        )

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SceneSpec:
        camera = doc["camera"]
        objects = tuple(
            ObjectSpec(
                id=o["id"],
                entry=BankEntry(**o["entry"]),
                size=o["size"],
                z=o["z"],
                trajectory=Trajectory(
                    start=tuple(o["trajectory"]["start"]),
                    end=tuple(o["trajectory"]["end"]),
                    wobble=o["trajectory"]["wobble"],
                    wobble_periods=o["trajectory"]["wobble_periods"],
                ),
                spin=o.get("spin", 0.0),
            )
            for o in doc["objects"]
        )
        return cls(
            width=doc["width"],
            height=doc["height"],
            num_frames=doc["num_frames"],
            fps=doc["fps"],
            camera=Camera(camera["image"], tuple(camera["start"]), tuple(camera["end"])),
            objects=objects,
            tone=doc.get("tone", "normal"),
            seed=doc.get("seed", 0),
            extra=dict(doc.get("extra", {})),
        )
