"""The VIVA editing pipeline: instructor + codec + editing DiT, saved and loaded as one directory.

Layout of a model directory (``save_pretrained`` / ``from_pretrained``)::

    viva_model.json      what the parts are and how clips are cut (geometry, sampling defaults)
    transformer/         diffusers HunyuanVideoTransformer3DModel (safetensors)
    codec/               codec.json (+ vae/ for the HunyuanVideo VAE)
    instructor/          the instructor, when it is small and local (the demo); large ones
                         (LLaVA-LLaMA-3-8B) are referenced by path or hub id instead
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import HunyuanVideoTransformer3DModel
from tqdm.auto import tqdm

from viva_pipelines.model.clips import ClipGeometry, to_model_pixels, to_uint8_frames
from viva_pipelines.model.codecs import VideoCodec, load_codec
from viva_pipelines.model.flow_matching import (
    PLAIN_GATE,
    GateReading,
    euler_step,
    guided_velocity,
    inference_sigmas,
)
from viva_pipelines.model.instructor import Instructor, InstructorConfig
from viva_pipelines.model.requests import MODEL_FILE
from viva_pipelines.model.transformer import pooled_vector, predict_velocity
from viva_pipelines.pairs.captions import mirror_sides

#: What ``save_lora_adapter`` writes (safetensors, peft key names).
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
FORMAT = "viva-edit-model/1"
#: Local instructors up to this size are copied into the model directory.
EMBED_INSTRUCTOR_MAX_BYTES = 200 * 2**20


@dataclass(frozen=True)
class SamplingDefaults:
    num_steps: int = 20
    guidance_scale: float = 1.5
    source_guidance_scale: float | None = None
    shift: float = 1.0
    gate_threshold: float = 0.5  # how a gated model's edit gate is read (GateReading)
    gate_sharpness: float = 1.0
    #: also edit the mirrored clip ("left"/"right" swapped) and average the two edits
    mirror_ensemble: bool = False

    def __post_init__(self) -> None:
        GateReading(self.gate_threshold, self.gate_sharpness)  # a bad one fails on loading

    @property
    def gate_reading(self) -> GateReading:
        return GateReading(self.gate_threshold, self.gate_sharpness)


@dataclass(frozen=True)
class ModelSpec:
    """The non-weight half of a model directory (``viva_model.json``)."""

    instructor: dict[str, Any]  # InstructorConfig fields; "model" may be "instructor" (embedded)
    pooled: str = "instructor_mean"
    embedded_guidance: float | None = None
    prediction: str = "velocity"  # what the DiT outputs (flow_matching.PREDICTIONS)
    frames: int = 4
    frame_stride: int = 4
    height: int = 32
    width: int = 32
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def geometry(self) -> ClipGeometry:
        """How the model cuts clips from a video (the geometry it was trained on)."""
        return ClipGeometry(self.frames, self.frame_stride, self.height, self.width)


@dataclass
class Conditions:
    """Condition tokens ``[B, L, D]`` with their right-padded mask ``[B, L]`` and pooled ``[B, P]``."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @classmethod
    def from_tokens(
        cls, tokens: torch.Tensor, mask: torch.Tensor, pooled_source: str
    ) -> Conditions:
        return cls(tokens, mask, pooled_vector(tokens, mask, pooled_source))

    def repeat(self, times: int) -> Conditions:
        """The batch repeated ``times`` times (one request's conditions for many clips)."""
        return Conditions(
            self.tokens.repeat(times, 1, 1),
            self.mask.repeat(times, 1),
            self.pooled.repeat(times, 1),
        )

    @classmethod
    def cat(cls, conditions: list[Conditions]) -> Conditions:
        """Batches of different token lengths as one batch (right-padded)."""
        tokens, mask = pad_conditions(conditions)
        return cls(tokens, mask, torch.cat([c.pooled for c in conditions]))


@torch.no_grad()
def sample_edit(
    transformer: torch.nn.Module,
    source: torch.Tensor,
    reference: torch.Tensor | None,
    cond: Conditions,
    uncond: Conditions,
    *,
    num_steps: int,
    guidance_scale: float,
    source_guidance_scale: float | None = None,
    shift: float = 1.0,
    embedded_guidance: float | None = None,
    prediction: str = "velocity",
    gate_reading: GateReading = PLAIN_GATE,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Edited latents ``[B, C, t, h, w]`` for source latents of the same shape.

    Classifier-free guidance in one batched model call per step: the unconditional branch has
    the empty instruction and no reference; with ``source_guidance_scale`` a third branch
    drops the source latents as well (see :func:`guided_velocity`). At ``guidance_scale`` 1
    without source guidance the guided velocity is the conditional one, and only that branch
    runs. Starts from ``noise`` (broadcast to the source's shape), else from noise drawn from
    ``generator``, and follows the :func:`inference_sigmas` schedule. ``gate_reading``: how a
    gated model's edit gate is read (:class:`~viva_pipelines.model.flow_matching.GateReading`).
    """
    if noise is None:
        noise = torch.randn(source.shape, generator=generator, dtype=torch.float32)
    x = noise.expand(source.shape).to(source.device, source.dtype)
    zeros = torch.zeros_like(source)
    no_reference = torch.zeros_like(reference) if reference is not None else None
    if source_guidance_scale is None and guidance_scale == 1:
        branches = [(source, reference, cond)]  # guided = conditional: one model call a step
    elif source_guidance_scale is None:
        branches = [(source, no_reference, uncond), (source, reference, cond)]
    else:
        branches = [(zeros, no_reference, uncond), (source, no_reference, uncond)]
        branches.append((source, reference, cond))
    sources = torch.cat([b[0] for b in branches])
    references = None if reference is None else torch.cat([b[1] for b in branches])
    conditions = Conditions.cat([b[2] for b in branches])
    sigmas = inference_sigmas(num_steps, shift).to(source.device)
    for i in tqdm(range(num_steps), disable=not progress, desc="editing"):
        v = predict_velocity(
            transformer,
            x.repeat(len(branches), 1, 1, 1, 1),
            sigmas[i],
            sources,
            references,
            conditions.tokens,
            conditions.mask,
            conditions.pooled,
            embedded_guidance=embedded_guidance,
            prediction=prediction,
            gate_reading=gate_reading,
        ).chunk(len(branches))
        if len(branches) == 1:
            velocity = v[0]
        elif source_guidance_scale is None:
            velocity = guided_velocity(v[0], v[1], guidance_scale)
        else:
            velocity = guided_velocity(
                v[0], v[2], guidance_scale, v_source=v[1], source_scale=source_guidance_scale
            )
        x = euler_step(x, velocity, sigmas[i], sigmas[i + 1])
    return x


def pad_conditions(conditions: list[Conditions]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate conditions of different token lengths along the batch, right-padded."""
    length = max(c.tokens.shape[1] for c in conditions)
    tokens, masks = [], []
    for c in conditions:
        extra = length - c.tokens.shape[1]
        tokens.append(torch.nn.functional.pad(c.tokens, (0, 0, 0, extra)))
        masks.append(torch.nn.functional.pad(c.mask, (0, extra)))
    return torch.cat(tokens), torch.cat(masks)


class VivaEditPipeline:
    """Edits videos from an instruction (and optionally a reference image)."""

    def __init__(
        self,
        transformer: HunyuanVideoTransformer3DModel,
        codec: VideoCodec,
        spec: ModelSpec,
        instructor: Instructor | None = None,
        *,
        instructor_root: Path | None = None,
    ):
        self.transformer = transformer.eval()
        self.codec = codec
        self.spec = spec
        self._instructor = instructor
        self._instructor_root = instructor_root

    @property
    def instructor(self) -> Instructor:
        """Loaded on first use: cached training never needs it."""
        if self._instructor is None:
            fields = dict(self.spec.instructor)
            if fields["model"] == "instructor" and self._instructor_root is not None:
                fields["model"] = str(self._instructor_root / "instructor")
            fields["device"] = str(self.device)
            self._instructor = Instructor(InstructorConfig(**fields))
        return self._instructor

    def load_lora(self, directory: str | Path) -> VivaEditPipeline:
        """Apply an Edit-GRPO LoRA (peft format, from ``save_lora_adapter``) to the DiT."""
        weights = Path(directory, LORA_WEIGHTS)
        if not weights.is_file():
            raise FileNotFoundError(f"{directory}: no LoRA adapter here (no {LORA_WEIGHTS})")
        self.transformer.load_lora_adapter(
            str(directory), weight_name=LORA_WEIGHTS, use_safetensors=True, prefix=None
        )
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # -- persistence -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(directory / "transformer")
        self.codec.save_pretrained(directory / "codec")
        instructor = dict(self.spec.instructor)
        source = Path(instructor["model"])
        if instructor["model"] == "instructor" and self._instructor_root is not None:
            source = self._instructor_root / "instructor"
        if source.is_dir() and _dir_size(source) <= EMBED_INSTRUCTOR_MAX_BYTES:
            if source.resolve() != (directory / "instructor").resolve():
                shutil.copytree(source, directory / "instructor", dirs_exist_ok=True)
            instructor["model"] = "instructor"
        doc = {"format": FORMAT, **asdict(self.spec), "instructor": instructor}
        (directory / MODEL_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | torch.device = "cpu"
    ) -> VivaEditPipeline:
        directory = Path(directory)
        model_file = directory / MODEL_FILE
        if not model_file.is_file():
            raise FileNotFoundError(f"{directory}: not a VIVA model directory (no {MODEL_FILE})")
        doc = json.loads(model_file.read_text())
        if doc.pop("format", None) != FORMAT:
            raise ValueError(f"{model_file}: unsupported model format (expected {FORMAT})")
        doc["sampling"] = SamplingDefaults(**doc.get("sampling", {}))
        spec = ModelSpec(**doc)
        transformer = HunyuanVideoTransformer3DModel.from_pretrained(directory / "transformer")
        codec = load_codec(directory / "codec")
        return cls(transformer.to(device), codec, spec, instructor_root=directory)

    # -- editing ---------------------------------------------------------------------------
    def conditions(
        self, instructions: list[str], first_frames: list[np.ndarray], references: list[Any]
    ) -> tuple[Conditions, Conditions]:
        """Conditional and unconditional instructor encodings for a batch."""
        out = self.instructor.encode(instructions, first_frames, references)
        empty = self.instructor.encode_unconditional(len(instructions))
        return (
            Conditions.from_tokens(out.tokens, out.attention_mask, self.spec.pooled),
            Conditions.from_tokens(empty.tokens, empty.attention_mask, self.spec.pooled),
        )

    @torch.no_grad()
    def prepare(
        self, instruction: str, first_frame: np.ndarray, reference: np.ndarray | None = None
    ) -> PreparedEdit:
        """What every clip of one edit request shares: the instructor's encodings of the
        instruction with the video's first frame (and reference), and the reference's latent;
        with the sampling default ``mirror_ensemble``, the same for the request seen in a
        mirror (pictures flipped, "left" and "right" swapped in the instruction)."""
        prepared = self._prepare_view(instruction, first_frame, reference)
        if not self.spec.sampling.mirror_ensemble:
            return prepared
        mirrored = self._prepare_view(
            mirror_sides(instruction),
            first_frame[:, ::-1].copy(),
            None if reference is None else reference[:, ::-1].copy(),
        )
        return PreparedEdit(prepared.cond, prepared.uncond, prepared.ref_latent, mirrored)

    def _prepare_view(
        self, instruction: str, first_frame: np.ndarray, reference: np.ndarray | None
    ) -> PreparedEdit:
        cond, uncond = self.conditions([instruction], [first_frame], [reference])
        ref_latent = None
        if reference is not None:
            ref_pixels = to_model_pixels(self.spec.geometry.fit(reference)[None])[None]
            ref_latent = self.codec.encode(ref_pixels.to(self.device))
        return PreparedEdit(cond, uncond, ref_latent)

    @torch.no_grad()
    def edit_clips(
        self,
        clips: np.ndarray,
        prepared: PreparedEdit,
        *,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        source_guidance_scale: float | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> np.ndarray:
        """Edit clips already at the model's geometry (``uint8 [n, frames, height, width, 3]``,
        e.g. consecutive windows of one video) in one batch; returns the same shape. Every
        clip starts from the same noise (drawn from ``seed``), so a clip comes out as it
        would alone and windows of one video agree with each other.

        With a mirrored view in ``prepared`` (:meth:`prepare`), the flipped clips are edited
        in the same batch, flipped back and averaged with the plain edits: a self-ensemble of
        two views the model was trained on (a flipped pair keeps its meaning once "left" and
        "right" are swapped), whose average is closer to the ground truth than either
        (docs/benchmark.md measures it), and an editor that edits a mirrored request into the
        mirror of its edit."""
        pixels = torch.stack([to_model_pixels(clip) for clip in clips]).to(self.device)
        views = [prepared] if prepared.mirrored is None else [prepared, prepared.mirrored]
        count = len(clips)
        source = self.codec.encode(
            pixels if len(views) == 1 else torch.cat([pixels, pixels.flip(-1)])
        )
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, *source.shape[1:]), generator=generator, dtype=torch.float32)
        reference = None
        if prepared.ref_latent is not None:
            reference = torch.cat(
                [view.ref_latent.expand(count, *view.ref_latent.shape[1:]) for view in views]
            )
        sampling = self.spec.sampling
        latents = sample_edit(
            self.transformer,
            source,
            reference,
            Conditions.cat([view.cond.repeat(count) for view in views]),
            Conditions.cat([view.uncond.repeat(count) for view in views]),
            num_steps=sampling.num_steps if num_steps is None else num_steps,
            guidance_scale=sampling.guidance_scale if guidance_scale is None else guidance_scale,
            source_guidance_scale=source_guidance_scale or sampling.source_guidance_scale,
            shift=sampling.shift,
            embedded_guidance=self.spec.embedded_guidance,
            prediction=self.spec.prediction,
            gate_reading=sampling.gate_reading,
            noise=noise,  # the same start for every clip and both views
            progress=progress,
        )
        decoded = self.codec.decode(latents)
        if len(views) == 2:
            plain, mirrored = decoded.chunk(2)
            decoded = (plain + mirrored.flip(-1)) / 2
        return np.stack([to_uint8_frames(clip) for clip in decoded])

    def edit(
        self,
        frames: np.ndarray,
        instruction: str,
        *,
        reference: np.ndarray | None = None,
        seed: int = 0,
        **sampling: Any,
    ) -> np.ndarray:
        """Edit ``frames`` (``uint8 [T, H, W, 3]``, the whole clip; the model's frame count is
        taken every ``frame_stride`` frames) and return ``uint8 [t, height, width, 3]``.
        ``sampling``: ``num_steps``, ``guidance_scale``, ``source_guidance_scale``,
        ``progress`` (see :meth:`edit_clips`)."""
        prepared = self.prepare(instruction, frames[0], reference)
        clip = self.spec.geometry.cut(frames)
        return self.edit_clips(clip[None], prepared, seed=seed, **sampling)[0]


@dataclass(frozen=True)
class PreparedEdit:
    """One edit request's instructor encodings (and reference latent), shared by its clips;
    ``mirrored``: the same for the request seen in a mirror, when sampling ensembles the two."""

    cond: Conditions
    uncond: Conditions
    ref_latent: torch.Tensor | None
    mirrored: PreparedEdit | None = None


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
