"""Video codecs: the exact pixel codec, the HunyuanVideo VAE codec on a tiny random-weight VAE,
saving and loading (directly and through ``load_codec``), and one shared interface check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo

from viva_pipelines.embedded.vae import tiny_hunyuan_vae
from viva_pipelines.model.codecs import (
    CODEC_FILE,
    HunyuanVideoVaeCodec,
    PixelCodec,
    VideoCodec,
    check_hunyuan_vae_layout,
    load_codec,
)


def video(b: int = 1, t: int = 5, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """A random video ``[B, 3, T, H, W]`` uniform in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def tiny_codec() -> HunyuanVideoVaeCodec:
    return HunyuanVideoVaeCodec(tiny_hunyuan_vae(seed=0))


@pytest.fixture(scope="module")
def saved_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain diffusers model folder with the tiny VAE under ``vae/`` (like the hub layout)."""
    root = tmp_path_factory.mktemp("hunyuan_model")
    tiny_hunyuan_vae(seed=0).save_pretrained(root / "vae")
    return root


# --------------------------------------------------------------------------- PixelCodec


@pytest.mark.parametrize("factor", [1, 2, 4])
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_pixel_round_trip_is_exact(factor: int, scale: float) -> None:
    codec = PixelCodec(factor=factor, scale=scale)
    x = video(b=2, t=3, h=8, w=12)
    torch.testing.assert_close(codec.decode(codec.encode(x)), x, atol=1e-6, rtol=0)


def test_pixel_latent_shape() -> None:
    codec = PixelCodec(factor=2)
    assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (12, 2, 1)
    assert codec.latent_shape(7, 8, 12) == (12, 7, 4, 6)
    assert codec.encode(video(b=2, t=7, h=8, w=12)).shape == (2, 12, 7, 4, 6)
    assert PixelCodec(factor=1).latent_shape(4, 5, 3) == (3, 4, 5, 3)  # plain pixel space


def test_pixel_space_to_depth_layout() -> None:
    # One frame, 3 colour channels, a 2x2 picture whose values are 0..11 in (c, i, j) order:
    # pixel_unshuffle puts pixel (i, j) of colour c in channel c*4 + i*2 + j, so the 12
    # latent channels must read 0, 1, ..., 11.
    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 1, 2, 2) / 12
    z = PixelCodec(factor=2).encode(x)
    assert z.shape == (1, 12, 1, 1, 1)
    torch.testing.assert_close(z.flatten(), torch.arange(12, dtype=torch.float32) / 12)

    # Frames are packed independently and stay on the time axis: a second frame with other
    # values lands in latent frame 1 only.
    x2 = torch.cat([x, -x], dim=2)  # [1, 3, 2, 2, 2]
    z2 = PixelCodec(factor=2).encode(x2)
    torch.testing.assert_close(z2[:, :, 0], z[:, :, 0])
    torch.testing.assert_close(z2[:, :, 1], -z[:, :, 0])

    # A wider picture: each 2x2 block becomes one latent pixel, blocks keep their position.
    red = torch.tensor([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]])  # H=2, W=4
    x3 = torch.zeros(1, 3, 1, 2, 4)
    x3[0, 0, 0] = red
    z3 = PixelCodec(factor=2).encode(x3)  # [1, 12, 1, 1, 2]
    torch.testing.assert_close(z3[0, :4, 0, 0, 0], torch.tensor([0.0, 0.1, 0.4, 0.5]))
    torch.testing.assert_close(z3[0, :4, 0, 0, 1], torch.tensor([0.2, 0.3, 0.6, 0.7]))
    assert z3[0, 4:].abs().max() == 0


def test_pixel_scale_applied_and_undone() -> None:
    x = video(t=2, h=4, w=4)
    plain, scaled = PixelCodec(factor=2), PixelCodec(factor=2, scale=0.5)
    torch.testing.assert_close(scaled.encode(x), 0.5 * plain.encode(x))
    torch.testing.assert_close(scaled.decode(scaled.encode(x)), x, atol=1e-6, rtol=0)


def test_pixel_decode_clamps() -> None:
    codec = PixelCodec(factor=2)
    out = codec.decode(torch.full((1, 12, 1, 2, 2), 5.0))
    assert out.shape == (1, 3, 1, 4, 4)
    assert out.max() == 1.0


def test_pixel_rejects_bad_sizes_and_options() -> None:
    codec = PixelCodec(factor=2)
    with pytest.raises(ValueError, match=r"height 5 is not divisible by .* 2"):
        codec.encode(video(h=5, w=4))
    with pytest.raises(ValueError, match=r"width 7"):
        codec.latent_shape(1, 4, 7)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        codec.encode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, 12, t, h, w\]"):
        codec.decode(torch.zeros(1, 3, 1, 2, 2))
    with pytest.raises(ValueError, match="factor"):
        PixelCodec(factor=0)
    with pytest.raises(ValueError, match="scale"):
        PixelCodec(scale=0.0)


def test_pixel_save_load_round_trip(tmp_path: Path) -> None:
    codec = PixelCodec(factor=4, scale=0.25)
    codec.save_pretrained(tmp_path / "pix")
    assert json.loads((tmp_path / "pix" / CODEC_FILE).read_text()) == {
        "kind": "pixel",
        "factor": 4,
        "scale": 0.25,
    }
    loaded = PixelCodec.from_pretrained(tmp_path / "pix")
    assert loaded.config == codec.config
    x = video(h=8, w=8)
    torch.testing.assert_close(loaded.encode(x), codec.encode(x), atol=0, rtol=0)


# ------------------------------------------------------------------ HunyuanVideoVaeCodec


def test_tiny_vae_geometry(tiny_codec: HunyuanVideoVaeCodec) -> None:
    assert tiny_codec.latent_channels == 4
    assert tiny_codec.spatial_factor == 4
    assert tiny_codec.temporal_factor == 4
    assert tiny_codec.scaling_factor == pytest.approx(0.476986)
    # Seeded and independent of the global RNG.
    a, b = tiny_hunyuan_vae(seed=3), tiny_hunyuan_vae(seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(("frames", "latent_frames"), [(1, 1), (5, 2), (9, 3), (21, 6)])
def test_hunyuan_encode_shape_matches_latent_shape(
    tiny_codec: HunyuanVideoVaeCodec, frames: int, latent_frames: int
) -> None:
    # 21 > 16 frames also goes through diffusers' temporal-window encoding.
    expected = tiny_codec.latent_shape(frames, 16, 24)
    assert expected == (4, latent_frames, 4, 6)
    z = tiny_codec.encode(video(b=2, t=frames, h=16, w=24))
    assert z.shape == (2, *expected)


def test_hunyuan_latents_are_scaled_posterior_mean(tiny_codec: HunyuanVideoVaeCodec) -> None:
    x = video(t=5)
    with torch.no_grad():
        mean = tiny_codec.vae.encode(x).latent_dist.mean
    z = tiny_codec.encode(x)
    torch.testing.assert_close(z, mean * 0.476986)
    torch.testing.assert_close(tiny_codec.encode(x), z, atol=0, rtol=0)  # deterministic
    assert not z.requires_grad


def test_hunyuan_sample_posterior(tiny_codec: HunyuanVideoVaeCodec) -> None:
    x = video(t=5)
    s1 = tiny_codec.encode(x, sample_posterior=True, generator=torch.Generator().manual_seed(1))
    s2 = tiny_codec.encode(x, sample_posterior=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s1, s2, atol=0, rtol=0)
    assert not torch.allclose(s1, tiny_codec.encode(x))


def test_hunyuan_decode_shape_and_range(tiny_codec: HunyuanVideoVaeCodec) -> None:
    x = video(b=2, t=9, h=16, w=24)
    z = tiny_codec.encode(x)
    out = tiny_codec.decode(z)
    assert out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1
    # The random decoder overshoots [-1, 1], so the clamp is really exercised.
    with torch.no_grad():
        raw = tiny_codec.vae.decode(z / tiny_codec.scaling_factor).sample
    assert raw.abs().max() > 1
    torch.testing.assert_close(out, raw.clamp(-1, 1))


def test_hunyuan_rejects_bad_sizes(tiny_codec: HunyuanVideoVaeCodec) -> None:
    with pytest.raises(ValueError, match=r"4k\+1.*got 4"):
        tiny_codec.encode(video(t=4))
    with pytest.raises(ValueError, match=r"4k\+1.*got 8"):
        tiny_codec.latent_shape(8, 16, 16)
    with pytest.raises(ValueError, match=r"height 18"):
        tiny_codec.latent_shape(5, 18, 16)
    with pytest.raises(ValueError, match=r"\[B, 4, t, h, w\]"):
        tiny_codec.decode(torch.zeros(1, 3, 2, 4, 4))


def test_hunyuan_tiling_and_slicing_flags() -> None:
    plain = HunyuanVideoVaeCodec(tiny_hunyuan_vae())
    assert not plain.vae.use_tiling and not plain.vae.use_slicing
    flagged = HunyuanVideoVaeCodec(tiny_hunyuan_vae(), enable_tiling=True, enable_slicing=True)
    assert flagged.vae.use_tiling and flagged.vae.use_slicing
    assert flagged.config["enable_tiling"] and flagged.config["enable_slicing"]
    # Slicing (one sample at a time) does not change the numbers; at 16 px nothing is tiled.
    x = video(b=2, t=5)
    torch.testing.assert_close(flagged.encode(x), plain.encode(x), atol=1e-5, rtol=1e-5)


def test_hunyuan_save_load_round_trip(tmp_path: Path) -> None:
    codec = HunyuanVideoVaeCodec(tiny_hunyuan_vae(seed=2), enable_tiling=True)
    codec.save_pretrained(tmp_path / "codec")
    assert json.loads((tmp_path / "codec" / CODEC_FILE).read_text()) == {
        "kind": "hunyuan_vae",
        "enable_tiling": True,
        "enable_slicing": False,
        "dtype": "float32",
    }
    assert list((tmp_path / "codec" / "vae").glob("*.safetensors"))
    loaded = HunyuanVideoVaeCodec.from_pretrained(tmp_path / "codec")
    assert loaded.config == codec.config
    x = video(t=5)
    z = codec.encode(x)
    torch.testing.assert_close(loaded.encode(x), z, atol=0, rtol=0)
    torch.testing.assert_close(loaded.decode(z), codec.decode(z), atol=0, rtol=0)
    # Explicit arguments override what codec.json recorded.
    assert not HunyuanVideoVaeCodec.from_pretrained(
        tmp_path / "codec", enable_tiling=False
    ).vae.use_tiling


def test_hunyuan_from_diffusers_folder_with_dtype(saved_vae: Path) -> None:
    codec = HunyuanVideoVaeCodec.from_pretrained(saved_vae, subfolder="vae", dtype="float64")
    assert codec.vae.dtype == torch.float64
    x = video(t=5)
    z = codec.encode(x)
    assert z.dtype == torch.float32  # outputs follow the input, not the VAE
    reference = HunyuanVideoVaeCodec(tiny_hunyuan_vae(seed=0))
    torch.testing.assert_close(z, reference.encode(x), atol=1e-5, rtol=1e-5)


def test_hunyuan_layout_check_rejects_too_few_blocks() -> None:
    # Two blocks cannot hold two temporal downsamples: diffusers would silently compress time
    # by 2 while the config says 4.
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 2,
        up_block_types=("HunyuanVideoUpBlock3D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
    )
    with pytest.raises(ValueError, match="temporal_compression_ratio 4"):
        check_hunyuan_vae_layout(vae)
    with pytest.raises(ValueError, match="temporal_compression_ratio 4"):
        HunyuanVideoVaeCodec(vae)


# ----------------------------------------------------------------------------- load_codec


def test_load_codec_pixel_from_mapping_and_dir(tmp_path: Path) -> None:
    codec = load_codec({"kind": "pixel", "factor": 2, "scale": 0.5})
    assert isinstance(codec, PixelCodec) and codec.config == {"factor": 2, "scale": 0.5}
    codec.save_pretrained(tmp_path / "pix")
    again = load_codec(tmp_path / "pix")
    assert isinstance(again, PixelCodec) and again.config == codec.config
    assert isinstance(load_codec(str(tmp_path / "pix")), PixelCodec)


def test_load_codec_hunyuan_from_mapping_and_dir(saved_vae: Path, tmp_path: Path) -> None:
    codec = load_codec(
        {"kind": "hunyuan_vae", "model": str(saved_vae), "subfolder": "vae", "enable_tiling": True}
    )
    assert isinstance(codec, HunyuanVideoVaeCodec)
    assert codec.vae.use_tiling and not codec.vae.use_slicing
    codec.save_pretrained(tmp_path / "codec")
    again = load_codec(tmp_path / "codec")
    assert isinstance(again, HunyuanVideoVaeCodec) and again.config == codec.config
    x = video(t=5)
    torch.testing.assert_close(again.encode(x), codec.encode(x), atol=0, rtol=0)


def test_load_codec_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown codec kind 'jpeg'.*hunyuan_vae.*pixel"):
        load_codec({"kind": "jpeg"})
    with pytest.raises(ValueError, match="needs a 'kind'"):
        load_codec({"factor": 2})
    with pytest.raises(ValueError, match="needs a 'model'"):
        load_codec({"kind": "hunyuan_vae"})
    with pytest.raises(FileNotFoundError, match=CODEC_FILE):
        load_codec(tmp_path)
    (tmp_path / CODEC_FILE).write_text(json.dumps({"kind": "jpeg"}))
    with pytest.raises(ValueError, match="known kinds"):
        load_codec(tmp_path)
    PixelCodec().save_pretrained(tmp_path / "pix")
    with pytest.raises(ValueError, match="'pixel' codec"):
        HunyuanVideoVaeCodec.from_pretrained(tmp_path / "pix")


# ------------------------------------------------------------------ the shared interface


@pytest.fixture(params=["pixel", "hunyuan_vae"])
def any_codec(request: pytest.FixtureRequest) -> VideoCodec:
    if request.param == "pixel":
        return PixelCodec(factor=4, scale=0.5)
    return HunyuanVideoVaeCodec(tiny_hunyuan_vae(seed=1))


def test_codec_interface(any_codec: VideoCodec, tmp_path: Path) -> None:
    assert isinstance(any_codec, VideoCodec)
    assert any_codec.kind in {"pixel", "hunyuan_vae"}
    b, t, h, w = 2, 5, 16, 24
    shape = any_codec.latent_shape(t, h, w)
    c, lt, lh, lw = shape
    assert c == any_codec.latent_channels
    assert (lh, lw) == (h // any_codec.spatial_factor, w // any_codec.spatial_factor)
    assert lt == (t - 1) // any_codec.temporal_factor + 1

    x = video(b=b, t=t, h=h, w=w)
    z = any_codec.encode(x)
    assert z.shape == (b, *shape) and z.dtype == x.dtype and z.device == x.device
    out = any_codec.decode(z)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1

    with pytest.raises(ValueError, match="height"):
        any_codec.latent_shape(t, h + 1, w)
    with pytest.raises(ValueError, match="width"):
        any_codec.encode(video(t=t, h=h, w=w + 2))
    with pytest.raises(ValueError, match="frames"):
        any_codec.latent_shape(0, h, w)

    any_codec.save_pretrained(tmp_path / "saved")
    loaded = load_codec(tmp_path / "saved")
    assert type(loaded) is type(any_codec) and loaded.config == any_codec.config
    torch.testing.assert_close(loaded.encode(x), z, atol=0, rtol=0)
    torch.testing.assert_close(loaded.decode(z), out, atol=0, rtol=0)
