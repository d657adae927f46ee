"""The synthetic demo world: deterministic scenes of moving objects over real photographs.

Scenes are data (:class:`SceneSpec`); :func:`render` turns one into frames and an exact
visible-object id map; editing the data and rendering again gives ground-truth edited videos.
"""

from viva_pipelines.demo_world.dataset import generate_demo_videos, scene_seed, write_scene
from viva_pipelines.demo_world.render import render
from viva_pipelines.demo_world.sample import random_scene
from viva_pipelines.demo_world.scene import (
    BACKGROUNDS,
    PALETTE,
    SHAPES,
    SPRITES,
    TONES,
    BankEntry,
    Camera,
    ObjectSpec,
    SceneSpec,
    Trajectory,
    object_bank,
)

__all__ = [
    "BACKGROUNDS", "PALETTE", "SHAPES", "SPRITES", "TONES", "BankEntry", "Camera", "ObjectSpec",
    "SceneSpec", "Trajectory", "generate_demo_videos", "object_bank", "random_scene", "render",
    "scene_seed", "write_scene",
]  # fmt: skip
