"""A tiny ``AutoencoderKLHunyuanVideo`` in the real format, for tests and rehearsals."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLHunyuanVideo


def tiny_hunyuan_vae(seed: int = 0, *, latent_channels: int = 4) -> AutoencoderKLHunyuanVideo:
    """A randomly initialised ``AutoencoderKLHunyuanVideo`` small enough for CPU tests.

    Same block types, causal convolutions and mid-block attention as the real VAE, with
    ``latent_channels`` (the real VAE's 16 for rehearsals), block_out_channels (8, 8, 16), one
    layer per block, 4 norm groups, spatial ratio 4 and temporal ratio 4 (``T = 4k+1``), the
    real scaling factor. Three blocks
    are the minimum: temporal ratio 4 needs two temporal downsamples, which diffusers only
    places in blocks before the last (see :func:`check_hunyuan_vae_layout`). Seeded without
    touching the global RNG. Outputs are noise; only shapes and plumbing mean anything.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=latent_channels,
            down_block_types=("HunyuanVideoDownBlock3D",) * 3,
            up_block_types=("HunyuanVideoUpBlock3D",) * 3,
            block_out_channels=(8, 8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=4,
            temporal_compression_ratio=4,
            scaling_factor=0.476986,
        )
    return vae.eval()
