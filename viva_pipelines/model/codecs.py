"""Video codecs: the map between pixel videos and the latents the editing DiT works on.

Everything downstream (latent caching, training, sampling, previews) talks to one small
interface, :class:`VideoCodec`, so the CPU demo can run on a cheap exact codec
(:class:`PixelCodec`) and production on the HunyuanVideo causal 3D VAE
(:class:`HunyuanVideoVaeCodec`) without a branch anywhere else.

Conventions at every function boundary:

- videos are ``[B, 3, T, H, W]`` float in ``[-1, 1]``;
- latents are ``[B, C, t, h, w]`` and already multiplied by the codec's scaling factor, so the
  diffusion model sees roughly unit variance and never needs to know which codec made them;
- outputs come back with the input's dtype and device (a codec may compute elsewhere).

A codec round-trips through a directory: ``save_pretrained(path)`` writes a small
``codec.json`` (``{"kind": ..., <options>}``) plus any weights, and ``load_codec(path)`` (or
``<Codec>.from_pretrained(path)``) restores a codec with the same outputs.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLHunyuanVideo

from viva_pipelines.model.sources import dtype_of

CODEC_FILE = "codec.json"
"""Name of the file that records a saved codec's kind and options."""

VAE_SUBFOLDER = "vae"
"""Where :meth:`HunyuanVideoVaeCodec.save_pretrained` puts the diffusers VAE."""


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``"torch.bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``, so
    dtypes can come straight from YAML."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return dtype_of(str(dtype).removeprefix("torch."))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read_codec_file(path: str | Path) -> dict[str, Any]:
    """The parsed ``codec.json`` of a saved codec directory (clear error if there is none)."""
    file = Path(path) / CODEC_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a saved codec directory: no {CODEC_FILE} in it")
    data = json.loads(file.read_text())
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"{file} must hold a JSON object with a 'kind' key, got {data!r}")
    return data


def _write_codec_file(path: str | Path, kind: str, config: Mapping[str, Any]) -> Path:
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CODEC_FILE).write_text(json.dumps({"kind": kind, **config}, indent=2) + "\n")
    return directory


class VideoCodec(abc.ABC):
    """A frozen, deterministic map between videos and scaled latents.

    Subclasses set ``kind`` (the tag in ``codec.json`` / ``load_codec`` specs) and the three
    geometry attributes; :meth:`latent_shape` derives the latent grid (and validates a video
    size) from those alone, so callers can size buffers and reject bad clips before encoding.

    ``temporal_factor`` follows the causal-VAE rule: the first frame gets its own latent frame
    and every further ``temporal_factor`` frames share one, so ``T = temporal_factor * k + 1``
    frames give ``k + 1`` latent frames (``temporal_factor = 1`` keeps every frame).
    """

    kind: ClassVar[str]
    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    @abc.abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in ``[-1, 1]`` -> scaled latents ``[B, C, t, h, w]``."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, C, t, h, w]`` -> video ``[B, 3, T, H, W]`` clamped to ``[-1, 1]``."""

    @property
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The JSON-able options that, with ``kind``, go into ``codec.json``."""

    @abc.abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        """Write ``codec.json`` (and any weights) to the directory ``path``."""

    @classmethod
    @abc.abstractmethod
    def from_pretrained(cls, path: str | Path) -> VideoCodec:
        """Restore a codec saved by :meth:`save_pretrained`."""

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> VideoCodec:
        """Build from a ``load_codec`` mapping (``kind`` already removed)."""

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, t, h, w)`` for a ``frames x height x width`` video.

        Raises ``ValueError`` naming the offending dimension when the size is not one this codec
        can encode and decode back to the same size (height/width not divisible by
        ``spatial_factor``, frames not of the form ``temporal_factor * k + 1``).
        """
        for name, value in (("frames", frames), ("height", height), ("width", width)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        tf, sf = self.temporal_factor, self.spatial_factor
        if (frames - 1) % tf:
            raise ValueError(
                f"frames must be {tf}k+1 for this codec (temporal factor {tf}), got {frames}"
            )
        for name, value in (("height", height), ("width", width)):
            if value % sf:
                raise ValueError(
                    f"{name} {value} is not divisible by the codec's spatial factor {sf}"
                )
        return (self.latent_channels, (frames - 1) // tf + 1, height // sf, width // sf)

    def _check_video(self, video: torch.Tensor) -> tuple[int, int, int, int]:
        """Validate ``[B, 3, T, H, W]`` and return its latent shape."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, T, H, W], got shape {tuple(video.shape)}")
        return self.latent_shape(*video.shape[2:])

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, t, h, w], "
                f"got shape {tuple(latents.shape)}"
            )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({options})"


class PixelCodec(VideoCodec):
    """Tiny exact demo codec: per-frame space-to-depth (``pixel_unshuffle``) times ``scale``.

    ``[B, 3, T, H, W] -> [B, 3 * f * f, T, H / f, W / f]``; channel ``c * f * f + i * f + j``
    holds pixel ``(i, j)`` of each ``f x f`` block of colour channel ``c`` (PyTorch's
    ``pixel_unshuffle`` order). It has no weights and is an exact inverse, so the CPU demo and
    tests exercise the latent-space machinery without a VAE and without reconstruction error.
    ``factor=1`` is plain pixel space. ``temporal_factor`` is 1 (every frame kept).
    """

    kind: ClassVar[str] = "pixel"

    def __init__(self, factor: int = 2, scale: float = 1.0) -> None:
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        self.factor = int(factor)
        self.scale = float(scale)
        self.latent_channels = 3 * self.factor**2
        self.spatial_factor = self.factor
        self.temporal_factor = 1

    @property
    def config(self) -> dict[str, Any]:
        return {"factor": self.factor, "scale": self.scale}

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> ``[B, 3 f^2, T, H / f, W / f]``, times ``scale``."""
        self._check_video(video)
        b, c, t, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        packed = F.pixel_unshuffle(frames, self.factor)  # [B*T, 3 f^2, H/f, W/f]
        latents = packed.reshape(b, t, *packed.shape[1:]).permute(0, 2, 1, 3, 4)
        return latents * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, 3 f^2, t, h, w]`` -> ``[B, 3, t, h f, w f]``, clamped to ``[-1, 1]``."""
        self._check_latents(latents)
        b, c, t, h, w = latents.shape
        frames = (latents / self.scale).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        unpacked = F.pixel_shuffle(frames, self.factor)  # [B*T, 3, h f, w f]
        video = unpacked.reshape(b, t, *unpacked.shape[1:]).permute(0, 2, 1, 3, 4)
        return video.clamp(-1.0, 1.0)

    def save_pretrained(self, path: str | Path) -> None:
        _write_codec_file(path, self.kind, self.config)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PixelCodec:
        data = _read_codec_file(path)
        kind = data.pop("kind")
        if kind != cls.kind:
            raise ValueError(f"{path} holds a {kind!r} codec, not {cls.kind!r}")
        return cls(**data)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> PixelCodec:
        return cls(**spec)


def check_hunyuan_vae_layout(vae: AutoencoderKLHunyuanVideo) -> None:
    """Raise ``ValueError`` if the VAE's blocks cannot realise its configured compression.

    diffusers places one spatial down/upsample in each of the first ``log2(spatial ratio)``
    blocks and the temporal ones in the blocks before the last, silently capping both at what
    the block count allows. A VAE with too few blocks therefore compresses less than
    ``config.{spatial,temporal}_compression_ratio`` says (e.g. two blocks with temporal ratio 4
    turn 5 frames into 3 latent frames, not 2), and every shape computed from the config, and
    diffusers' own temporal tiling, would be wrong. Checked here so that fails loudly.
    """
    cfg = vae.config
    blocks = len(cfg.block_out_channels)
    spatial_layers = int(math.log2(cfg.spatial_compression_ratio))
    temporal_layers = int(math.log2(cfg.temporal_compression_ratio))
    if 2**spatial_layers != cfg.spatial_compression_ratio or spatial_layers > blocks:
        raise ValueError(
            f"spatial_compression_ratio {cfg.spatial_compression_ratio} needs a power of two "
            f"with log2 <= the number of blocks ({blocks})"
        )
    if 2**temporal_layers != cfg.temporal_compression_ratio or temporal_layers > blocks - 1:
        raise ValueError(
            f"temporal_compression_ratio {cfg.temporal_compression_ratio} needs a power of two "
            f"with log2 <= number of blocks - 1 ({blocks - 1})"
        )


class HunyuanVideoVaeCodec(VideoCodec):
    """The HunyuanVideo causal 3D VAE (``diffusers.AutoencoderKLHunyuanVideo``), frozen.

    Geometry comes from the VAE config: ``spatial_factor = spatial_compression_ratio`` (8 for
    the real one), ``temporal_factor = temporal_compression_ratio`` (4: ``T = 4k+1`` frames ->
    ``k + 1`` latent frames), ``latent_channels`` (16), and latents are multiplied by
    ``scaling_factor`` (0.476986), as the HunyuanVideo pipeline does.

    Encoding uses the posterior mean by default, so cached latents are reproducible bit for
    bit across runs; ``sample_posterior=True`` draws from the posterior instead (pass a
    ``generator`` on the VAE's device for repeatability), which acts as a mild augmentation.

    ``enable_tiling`` / ``enable_slicing`` switch on diffusers' spatial tiling (bounded memory
    for large frames; tiles of 256 px, stride 192, blended) and per-sample batch slicing.
    Neither changes which sizes are valid. The flags only switch features on: ``False`` leaves
    a VAE that already has tiling/slicing enabled (e.g. with custom tile sizes) as it is.
    Independently, diffusers always encodes clips longer than 16 frames in overlapping
    temporal windows.

    Inputs are moved to the VAE's device and dtype; outputs come back in the input's.
    """

    kind: ClassVar[str] = "hunyuan_vae"

    def __init__(
        self,
        vae: AutoencoderKLHunyuanVideo,
        *,
        enable_tiling: bool = False,
        enable_slicing: bool = False,
    ) -> None:
        check_hunyuan_vae_layout(vae)
        self.vae = vae.eval().requires_grad_(False)
        if enable_tiling:
            vae.enable_tiling()
        if enable_slicing:
            vae.enable_slicing()
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.spatial_factor = int(cfg.spatial_compression_ratio)
        self.temporal_factor = int(cfg.temporal_compression_ratio)
        self.scaling_factor = float(cfg.scaling_factor)

    @property
    def config(self) -> dict[str, Any]:
        # Read back from the VAE so a later vae.enable_tiling() is saved too.
        return {
            "enable_tiling": bool(self.vae.use_tiling),
            "enable_slicing": bool(self.vae.use_slicing),
            "dtype": _dtype_name(self.vae.dtype),
        }

    @torch.no_grad()
    def encode(
        self,
        video: torch.Tensor,
        *,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in ``[-1, 1]``, ``T = 4k+1`` -> ``[B, C, k+1, H/8, W/8]`` (for the
        real VAE), already times ``scaling_factor``.

        ``sample_posterior=False`` (default) returns the posterior mean (deterministic);
        ``True`` samples it with ``generator``.
        """
        self._check_video(video)
        x = video.to(device=self.vae.device, dtype=self.vae.dtype)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mean
        return (z * self.scaling_factor).to(device=video.device, dtype=video.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled ``[B, C, t, h, w]`` -> ``[B, 3, 4(t-1)+1, 8h, 8w]`` (real VAE) in ``[-1, 1]``."""
        self._check_latents(latents)
        z = latents.to(device=self.vae.device, dtype=self.vae.dtype) / self.scaling_factor
        video = self.vae.decode(z).sample
        return video.clamp(-1.0, 1.0).to(device=latents.device, dtype=latents.dtype)

    def save_pretrained(self, path: str | Path) -> None:
        """``codec.json`` (flags, dtype) plus the VAE as safetensors under ``path/vae``."""
        directory = _write_codec_file(path, self.kind, self.config)
        self.vae.save_pretrained(directory / VAE_SUBFOLDER, safe_serialization=True)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        subfolder: str | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str = "cpu",
        enable_tiling: bool | None = None,
        enable_slicing: bool | None = None,
    ) -> HunyuanVideoVaeCodec:
        """Load from a directory written by :meth:`save_pretrained`, or from any diffusers
        location of an ``AutoencoderKLHunyuanVideo`` (local folder or hub id; the official
        checkpoint needs ``subfolder="vae"``).

        For a saved codec directory, ``dtype`` and the flags default to what ``codec.json``
        recorded; ``None`` elsewhere means the checkpoint's dtype and flags off.
        """
        saved: dict[str, Any] = {}
        local = Path(path_or_hub_id)
        if subfolder is None and (local / CODEC_FILE).is_file():
            saved = _read_codec_file(local)
            if saved.get("kind") != cls.kind:
                raise ValueError(f"{local} holds a {saved.get('kind')!r} codec, not {cls.kind!r}")
            subfolder = VAE_SUBFOLDER
        torch_dtype = _as_dtype(dtype if dtype is not None else saved.get("dtype"))
        kwargs: dict[str, Any] = {"subfolder": subfolder}
        if torch_dtype is not None:
            kwargs["torch_dtype"] = torch_dtype
        vae = AutoencoderKLHunyuanVideo.from_pretrained(str(path_or_hub_id), **kwargs)
        vae = vae.to(device)
        return cls(
            vae,
            enable_tiling=bool(
                saved.get("enable_tiling", False) if enable_tiling is None else enable_tiling
            ),
            enable_slicing=bool(
                saved.get("enable_slicing", False) if enable_slicing is None else enable_slicing
            ),
        )

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> HunyuanVideoVaeCodec:
        """``{"model": <path or hub id>, "subfolder": ..., "dtype": ..., "device": ...,
        "enable_tiling": ..., "enable_slicing": ...}``; only ``model`` is required."""
        options = dict(spec)
        if "model" not in options:
            raise ValueError(f"a {cls.kind!r} codec spec needs a 'model' (path or hub id)")
        model = options.pop("model")
        return cls.from_pretrained(model, **options)


CODECS: dict[str, type[VideoCodec]] = {
    PixelCodec.kind: PixelCodec,
    HunyuanVideoVaeCodec.kind: HunyuanVideoVaeCodec,
}
"""Codec classes by ``kind``, the tag used in ``codec.json`` and in ``load_codec`` specs."""


def _codec_class(kind: Any) -> type[VideoCodec]:
    if kind not in CODECS:
        raise ValueError(f"unknown codec kind {kind!r}; known kinds: {sorted(CODECS)}")
    return CODECS[kind]


def load_codec(spec: Mapping[str, Any] | str | Path) -> VideoCodec:
    """A codec from a saved directory (path to a folder with ``codec.json``) or from a spec
    mapping such as ``{"kind": "pixel", "factor": 2}`` or ``{"kind": "hunyuan_vae", "model":
    "hunyuanvideo-community/HunyuanVideo", "subfolder": "vae", "enable_tiling": True}``.

    The mapping's other keys are the codec class's options (see ``from_spec``); an unknown
    ``kind`` raises ``ValueError`` listing the known ones.
    """
    if isinstance(spec, (str, Path)):
        kind = _read_codec_file(spec)["kind"]
        return _codec_class(kind).from_pretrained(spec)
    if not isinstance(spec, Mapping):
        raise TypeError(f"codec spec must be a mapping or a directory, got {type(spec).__name__}")
    options = dict(spec)
    if "kind" not in options:
        raise ValueError(f"codec spec needs a 'kind'; known kinds: {sorted(CODECS)}")
    return _codec_class(options.pop("kind")).from_spec(options)
