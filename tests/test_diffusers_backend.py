"""The diffusers editing backend over tiny random-weight pipelines saved to disk and loaded back
through ``from_pretrained``: shapes, exact compositing, shared noise, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from viva_pipelines.config.schema import DiffusersSettings
from viva_pipelines.embedded.diffusers import save_tiny_inpaint_pipeline
from viva_pipelines.pairs.diffusers_backend import (
    DiffusersBackend,
    pipeline_size,
)

T, H, W = 3, 24, 40  # not square, not the pipeline size: exercises the resize both ways


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dedicated 9-channel inpainting folder and a plain 4-channel one."""
    root = tmp_path_factory.mktemp("models")
    return {
        "inpaint9": save_tiny_inpaint_pipeline(root / "inpaint9"),
        "plain4": save_tiny_inpaint_pipeline(root / "plain4", unet_in_channels=4, seed=1),
    }


@pytest.fixture(scope="module")
def settings() -> DiffusersSettings:
    return DiffusersSettings(
        device="cpu",
        dtype="float32",
        num_inference_steps=2,
        guidance_scale=3.0,
        strength=0.5,
        reference_strength=0.5,
        batch_size=2,  # 3 frames: two pipeline calls
        resolution=32,
        mask_dilation=2,
    )


@pytest.fixture(scope="module")
def backend(settings: DiffusersSettings, models: dict[str, Path]) -> DiffusersBackend:
    return DiffusersBackend(settings, models["inpaint9"], seed=0)


@pytest.fixture(scope="module")
def plain_backend(models: dict[str, Path], settings: DiffusersSettings) -> DiffusersBackend:
    """Over a plain 4-channel UNet: restyle shares it through ``from_pipe``."""
    return DiffusersBackend(settings, models["plain4"], seed=0)


@pytest.fixture
def frames() -> np.ndarray:
    """``uint8 [T, H, W, 3]``: a smooth gradient with a moving square, plus mild noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 6, y * 10, np.full_like(x, 128)], axis=-1).astype(np.float64)
    clip = np.repeat(base[None], T, axis=0)
    for t in range(T):
        clip[t, 8:16, 10 + 4 * t : 18 + 4 * t] = (220, 40, 40)
    return np.clip(clip + rng.normal(0, 3, clip.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def masks() -> np.ndarray:
    """``bool [T, H, W]`` over the square; the last frame's mask is empty."""
    out = np.zeros((T, H, W), dtype=bool)
    for t in range(T - 1):
        out[t, 8:16, 10 + 4 * t : 18 + 4 * t] = True
    return out


def _grow(masks: np.ndarray, radius: int) -> np.ndarray:
    """An independent upper bound for the dilated masks: square dilation by ``radius``."""
    padded = np.pad(masks, ((0, 0), (radius, radius), (radius, radius)))
    out = np.zeros_like(masks)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[:, dy : dy + masks.shape[1], dx : dx + masks.shape[2]]
    return out


def test_loads_the_saved_folders_through_from_pretrained(
    backend: DiffusersBackend,
    plain_backend: DiffusersBackend,
    models: dict[str, Path],
    settings: DiffusersSettings,
) -> None:
    assert backend.name == "diffusers"
    pipe = backend.inpaint_pipeline
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe.safety_checker is None
    assert pipe._progress_bar_config == {"disable": True}
    assert pipe.unet.config.in_channels == 9
    # A 9-channel UNet cannot drive image-to-image: restyle inpaints with a full mask instead.
    assert backend.img2img_pipeline is None

    shared = plain_backend.img2img_pipeline
    assert type(shared).__name__ == "StableDiffusionImg2ImgPipeline"
    assert shared.unet is plain_backend.inpaint_pipeline.unet  # from_pipe: loaded once
    assert shared._progress_bar_config == {"disable": True}

    separate = DiffusersBackend(settings, models["inpaint9"], str(models["plain4"]), seed=0)
    assert type(separate.img2img_pipeline).__name__ == "StableDiffusionImg2ImgPipeline"
    assert separate.img2img_pipeline.unet is not separate.inpaint_pipeline.unet


@pytest.mark.parametrize(
    ("which", "operation"),
    [
        ("backend", "inpaint"),
        ("backend", "render_object"),
        ("backend", "render_with_reference"),
        ("plain_backend", "inpaint"),  # a 4-channel UNet inpaints by latent blending
    ],
)
def test_local_edits_change_only_the_dilated_mask(
    request: pytest.FixtureRequest,
    frames: np.ndarray,
    masks: np.ndarray,
    which: str,
    operation: str,
) -> None:
    backend: DiffusersBackend = request.getfixturevalue(which)
    source = frames.copy()
    if operation == "inpaint":
        out = backend.inpaint(frames, masks)
    elif operation == "render_object":
        out = backend.render_object(frames, masks, "a green ball")
    else:
        reference = np.full((10, 6, 3), (0, 200, 0), dtype=np.uint8)
        out = backend.render_object(frames, masks, "a green ball", reference=reference)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.array_equal(frames, source)  # inputs untouched
    region = backend.changed_region(masks)
    assert region[masks].all() and region.sum() > masks.sum()
    assert not (region & ~_grow(masks, backend.config.mask_dilation)).any()
    assert np.array_equal(out[~region], source[~region])
    assert np.array_equal(out[T - 1], source[T - 1])  # empty mask: frame untouched
    changed = np.abs(out.astype(int) - source.astype(int)).max(axis=-1)
    assert (changed[masks] > 0).mean() > 0.9


def test_reference_feeds_render_object(
    backend: DiffusersBackend, frames: np.ndarray, masks: np.ndarray
) -> None:
    """The pasted reference is the starting point of denoising, so it changes the result.
    (Random weights do not preserve colours through the VAE, so only a difference is checked.)"""
    plain = backend.render_object(frames, masks, "a ball")
    white = backend.render_object(frames, masks, "a ball", np.full((4, 4, 3), 255, np.uint8))
    black = backend.render_object(frames, masks, "a ball", np.zeros((4, 4, 3), np.uint8))
    assert not np.array_equal(white[masks], black[masks])
    assert not np.array_equal(white[masks], plain[masks])


@pytest.mark.parametrize("which", ["backend", "plain_backend"])
def test_restyle_changes_the_whole_frame(
    request: pytest.FixtureRequest, frames: np.ndarray, which: str
) -> None:
    backend: DiffusersBackend = request.getfixturevalue(which)
    out = backend.restyle(frames, "a watercolor painting")
    assert out.shape == frames.shape and out.dtype == np.uint8
    changed = np.abs(out.astype(int) - frames.astype(int)).max(axis=-1) > 0
    assert changed.mean() > 0.9
    assert np.array_equal(backend.restyle(frames, "a watercolor painting"), out)


def test_same_seed_same_output_other_seed_other_output(
    backend: DiffusersBackend,
    settings: DiffusersSettings,
    models: dict[str, Path],
    frames: np.ndarray,
    masks: np.ndarray,
) -> None:
    first = backend.inpaint(frames, masks)
    assert np.array_equal(backend.inpaint(frames, masks), first)
    reseeded = DiffusersBackend(settings, models["inpaint9"], seed=1)
    assert not np.array_equal(reseeded.inpaint(frames, masks), first)


def test_frames_of_a_clip_share_their_noise(
    backend: DiffusersBackend, settings: DiffusersSettings, models: dict, frames: np.ndarray
) -> None:
    """Identical frames come out identical, within and across pipeline batches (3 frames at
    batch size 2). The tolerance of one grey level covers float reduction-order differences
    between batch rows; different noise moves pixels by far more (checked below)."""
    clip = np.repeat(frames[:1], T, axis=0)
    out = backend.restyle(clip, "snow").astype(int)
    assert np.abs(out - out[0]).max() <= 1
    other = DiffusersBackend(settings, models["inpaint9"], seed=1)
    assert np.abs(other.restyle(clip[:1], "snow").astype(int) - out[0]).max() > 10


@pytest.mark.parametrize("field", ["inpaint_model", "img2img_model"])
def test_missing_model_path_is_named(
    settings: DiffusersSettings, models: dict, tmp_path: Path, field: str
) -> None:
    missing = tmp_path / "no-such-model"
    paths = {"inpaint_model": models["inpaint9"], "img2img_model": None} | {field: missing}
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        DiffusersBackend(settings, **paths, seed=0)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument")  # diffusers' own call
def test_uncached_hub_id_is_named(settings: DiffusersSettings) -> None:
    """Offline (conftest), a hub id that is not in the local cache fails with its name."""
    with pytest.raises(FileNotFoundError, match="nobody/not-cached"):
        DiffusersBackend(settings, "nobody/not-cached", seed=0)


def test_folder_without_model_index_is_rejected(
    settings: DiffusersSettings, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        DiffusersBackend(settings, tmp_path, seed=0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"resolution": 60},
        {"dtype": "float64"},
        {"strength": 0.0},
        {"num_inference_steps": 2, "strength": 0.4},  # int(2 * 0.4) == 0 steps
        {"batch_size": 0},
    ],
)
def test_settings_refuse_unusable_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DiffusersSettings(**overrides)


def test_inputs_are_checked_and_empty_clips_pass(
    backend: DiffusersBackend, frames: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="masks"):
        backend.inpaint(frames, np.zeros((T, H, W + 1), dtype=bool))
    with pytest.raises(ValueError, match="uint8"):
        backend.restyle(frames.astype(np.float32), "snow")
    empty = frames[:0]
    assert backend.inpaint(empty, np.zeros((0, H, W), dtype=bool)).shape == empty.shape
    assert backend.restyle(empty, "snow").shape == empty.shape


@pytest.mark.parametrize(
    ("height", "width", "resolution", "expected"),
    [
        (24, 40, 32, (16, 32)),
        (720, 1280, 512, (288, 512)),
        (512, 512, 512, (512, 512)),
        (4, 1000, 512, (8, 512)),  # never below 8
    ],
)
def test_pipeline_size(height: int, width: int, resolution: int, expected: tuple) -> None:
    """Longer side at ``resolution``, aspect kept, multiples of 8."""
    assert pipeline_size(height, width, resolution) == expected
