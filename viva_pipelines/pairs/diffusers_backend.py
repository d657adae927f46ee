"""The production editing backend: Stable-Diffusion-style inpainting and image-to-image.

Three choices make per-frame diffusion usable for video edit pairs:

* **Shared noise.** Every frame is generated from identically seeded generators (one per
  frame in a batch, each re-seeded with ``seed`` on every call), so all frames of a clip — in
  any batch — start from the same latent noise and get the same ancestral noise, if any. The
  same content then tends to come out the same way, which cuts flicker; and a re-run
  reproduces the pair exactly. Generators live on the CPU so the noise is also the same on
  every device.
* **Exact compositing.** ``inpaint`` and ``render_object`` paste generated pixels only inside
  the dilated mask (:meth:`DiffusersBackend.changed_region`); everything else is the source,
  bit for bit, which generators rely on (the VAE round trip alone would shift every pixel).
  Dilation makes the generated patch cover the object's soft edges and shadow fringe.
* **One set of weights.** ``restyle`` reuses the inpainting components: through
  ``AutoPipelineForImage2Image.from_pipe`` when the UNet is a plain 4-channel one, otherwise
  (dedicated 9-channel inpainting UNets, which an image-to-image pipeline cannot drive) by
  inpainting with an all-True mask at ``strength`` < 1, which is image-to-image for such
  models (they are trained with fully masked images too). ``img2img_model`` loads a separate
  pipeline instead.

Frames go through the pipeline at ``resolution`` (longer side; aspect kept, sides rounded to
multiples of 8) and come back at their own size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from PIL import Image

from viva_pipelines.config.schema import DiffusersSettings
from viva_pipelines.model.sources import dtype_of, local_model_dir

#: The dtypes a diffusers pipeline runs in (float64 weights are not a pipeline option).

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def pipeline_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(height, width)`` for the pipeline: longer side ``resolution``, aspect kept, each
    side rounded to a multiple of 8 (what latent diffusion VAEs need)."""
    scale = resolution / max(height, width)
    return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)


class DiffusersBackend:
    """:class:`~viva_pipelines.pairs.types.EditBackend` over diffusers pipelines.

    Loads the pipelines on construction, so a wrong model path fails before any work.
    """

    name = "diffusers"

    def __init__(
        self,
        settings: DiffusersSettings,
        inpaint_model: str | Path,
        img2img_model: str | Path | None = None,
        *,
        seed: int,
    ) -> None:
        """``inpaint_model`` / ``img2img_model``: a local pipeline folder (with
        ``model_index.json``) or a hub id (resolved from the local Hugging Face cache when
        offline); ``img2img_model`` None reuses the inpainting components for ``restyle`` (see
        the module docstring). ``seed``: the noise of every pipeline call."""
        # Imported here: diffusers takes seconds to import, and this module must stay cheap to
        # import for code (e.g. Dagster definitions) that never runs a model.
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        self.config = settings
        self.seed = seed
        load_kwargs = {
            "dtype": dtype_of(settings.dtype),
            "safety_checker": None,
            "requires_safety_checker": False,
        }
        self.inpaint_pipeline = _from_pretrained(
            AutoPipelineForInpainting, inpaint_model, load_kwargs
        ).to(settings.device)
        #: None when ``restyle`` runs through the inpainting pipeline with a full mask.
        self.img2img_pipeline: DiffusionPipeline | None = None
        if img2img_model is not None:
            self.img2img_pipeline = _from_pretrained(
                AutoPipelineForImage2Image, img2img_model, load_kwargs
            ).to(settings.device)
        elif (
            self.inpaint_pipeline.unet.config.in_channels
            == self.inpaint_pipeline.vae.config.latent_channels
        ):
            self.img2img_pipeline = AutoPipelineForImage2Image.from_pipe(self.inpaint_pipeline)
        for pipe in (self.inpaint_pipeline, self.img2img_pipeline):
            if pipe is not None:
                pipe.set_progress_bar_config(disable=True)

    def changed_region(self, masks: np.ndarray) -> np.ndarray:
        """``bool [T, H, W]``: the pixels ``inpaint`` / ``render_object`` may change for
        ``masks`` (dilated by ``mask_dilation``); a generator can record it as the edit mask."""
        masks = np.asarray(masks, dtype=bool)
        radius = self.config.mask_dilation
        if radius == 0 or len(masks) == 0:
            return masks.copy()
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        return np.stack([cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in masks])

    def inpaint(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Remove what ``masks`` (``bool [T, H, W]``) cover: ``uint8 [T, H, W, 3]`` frames with
        background generated inside the dilated masks and the source everywhere else."""
        cfg = self.config
        return self._fill(frames, masks, cfg.remove_prompt, cfg.remove_negative_prompt, None)

    def render_object(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        prompt: str,
        reference: np.ndarray | None = None,
    ) -> np.ndarray:
        """Generate ``prompt`` inside the dilated ``masks``; the source elsewhere.

        ``reference`` (``uint8 [h, w, 3]``) is a hint, not an identity guarantee (no IP-adapter):
        it is stretched over each mask's bounding box, pasted where the mask is set, and the
        result is denoised from there at ``reference_strength`` instead of from pure noise, so
        its colours and layout carry over.
        """
        return self._fill(frames, masks, prompt, self.config.negative_prompt, reference)

    def restyle(self, frames: np.ndarray, prompt: str) -> np.ndarray:
        """Image-to-image every frame (``uint8 [T, H, W, 3]``) towards ``prompt`` at
        ``strength``; the whole frame changes."""
        _check_frames(frames)
        cfg = self.config
        if len(frames) == 0:
            return frames.copy()
        if self.img2img_pipeline is not None:
            return self._generate(
                self.img2img_pipeline, frames, None, prompt, cfg.negative_prompt, cfg.strength
            )
        everything = np.ones(frames.shape[:3], dtype=bool)
        return self._generate(
            self.inpaint_pipeline, frames, everything, prompt, cfg.negative_prompt, cfg.strength
        )

    def _fill(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        prompt: str,
        negative_prompt: str,
        reference: np.ndarray | None,
    ) -> np.ndarray:
        """Inpaint the frames whose mask is not empty, then composite inside the dilated mask."""
        _check_frames(frames)
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != frames.shape[:3]:
            raise ValueError(f"masks {masks.shape} do not match frames {frames.shape}")
        region = self.changed_region(masks)
        todo = np.flatnonzero(region.any(axis=(1, 2)))
        out = frames.copy()
        if todo.size == 0:
            return out
        init, strength = frames[todo], 1.0
        if reference is not None:
            if reference.dtype != np.uint8 or reference.ndim != 3 or reference.shape[2] != 3:
                raise ValueError(f"reference must be uint8 [h, w, 3], got {reference.shape}")
            init = np.stack(
                [_paste(f, m, reference) for f, m in zip(init, masks[todo], strict=True)]
            )
            strength = self.config.reference_strength
        generated = self._generate(
            self.inpaint_pipeline, init, region[todo], prompt, negative_prompt, strength
        )
        out[todo] = np.where(region[todo, ..., None], generated, frames[todo])
        return out

    def _generate(
        self,
        pipe: DiffusionPipeline,
        frames: np.ndarray,
        masks: np.ndarray | None,
        prompt: str,
        negative_prompt: str,
        strength: float,
    ) -> np.ndarray:
        """Run ``pipe`` over ``frames`` (``uint8 [N, H, W, 3]``; ``masks`` ``bool [N, H, W]``
        for inpainting, None for image-to-image) in batches; ``uint8 [N, H, W, 3]`` back at
        frame size."""
        cfg = self.config
        height, width = frames.shape[1:3]
        size = pipeline_size(height, width, cfg.resolution)
        images = [Image.fromarray(_resize(f, size)) for f in frames]
        mask_images = None if masks is None else [_mask_image(m, size) for m in masks]
        outputs = []
        for start in range(0, len(images), cfg.batch_size):
            batch = slice(start, start + cfg.batch_size)
            count = len(images[batch])
            kwargs: dict[str, Any] = {
                "prompt": [prompt] * count,
                "negative_prompt": [negative_prompt] * count,
                "image": images[batch],
                "strength": strength,
                "num_inference_steps": cfg.num_inference_steps,
                "guidance_scale": cfg.guidance_scale,
                "generator": [torch.Generator("cpu").manual_seed(self.seed) for _ in range(count)],
                "output_type": "np",
            }
            if mask_images is not None:
                kwargs |= {"mask_image": mask_images[batch], "height": size[0], "width": size[1]}
            with torch.inference_mode():
                outputs.append(pipe(**kwargs).images)
        pixels = (np.concatenate(outputs) * 255).round().clip(0, 255).astype(np.uint8)
        return np.stack([_resize(p, (height, width)) for p in pixels])


def _from_pretrained(
    auto_class: type, model: str | Path, load_kwargs: dict[str, Any]
) -> DiffusionPipeline:
    """Load ``model`` (local folder or hub id), with errors that name what was asked for:
    diffusers' own message for a missing folder talks about connecting to the hub."""
    local = local_model_dir(str(model), "diffusers pipeline", marker="model_index.json")
    if local is not None:
        return auto_class.from_pretrained(local, **load_kwargs)
    text = str(model)
    try:
        return auto_class.from_pretrained(text, **load_kwargs)
    except OSError as err:
        raise FileNotFoundError(
            f"diffusers model {text!r}: no such local folder, and not loadable as a hub id "
            f"(offline or not cached?): {err}"
        ) from err


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` = ``(height, width)``: area averaging to shrink, cubic to grow."""
    height, width = size
    if image.shape[:2] == size:
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _mask_image(mask: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """``mask`` at pipeline ``size`` as an ``L`` image; any coverage counts, so small or thin
    masks survive downscaling (the composite at frame size stays exact regardless)."""
    height, width = size
    covered = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return Image.fromarray(np.where(covered > 0, 255, 0).astype(np.uint8))


def _paste(frame: np.ndarray, mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``frame`` with ``reference`` stretched over the bounding box of ``mask`` and copied
    where ``mask`` is set (the starting point for reference-guided rendering)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return frame
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    patch = _resize(reference, (bottom - top, right - left))
    out = frame.copy()
    inside = mask[top:bottom, left:right]
    out[top:bottom, left:right][inside] = patch[inside]
    return out
