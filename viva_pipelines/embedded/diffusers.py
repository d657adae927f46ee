"""Tiny, randomly initialised Stable Diffusion and SDXL inpainting pipelines saved to disk.

Tests and the CPU demo need a folder that loads through the same ``from_pretrained`` path as a
real checkpoint, but nothing may be downloaded: every component (UNet, VAE, CLIP text encoder,
tokenizer, scheduler) is built here from a config with seeded random weights. The outputs are
noise-like pictures; only shapes, plumbing and determinism are meaningful.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

#: Token budget of the tiny text encoder (Stable Diffusion pads every prompt to this length).
MAX_TOKENS = 77
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(shifted))]


def _tiny_clip_tokenizer() -> CLIPTokenizer:
    """The real ``CLIPTokenizer`` over a character-level vocabulary with no merges: any text
    tokenizes (one token per character), and no vocabulary file has to be downloaded."""
    alphabet = _byte_level_alphabet()
    tokens = [*alphabet, *(ch + "</w>" for ch in alphabet), _BOS, _EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _tiny_unet(in_channels: int, **config: object) -> UNet2DConditionModel:
    """A two-level UNet (8 and 16 channels, cross-attention in the second) predicting 4
    latent channels; ``config`` adds or overrides ``UNet2DConditionModel`` arguments."""
    return UNet2DConditionModel(
        **{
            "sample_size": 16,
            "in_channels": in_channels,
            "out_channels": 4,
            "block_out_channels": (8, 16),
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": 4,
        }
        | config
    )


def _tiny_vae() -> AutoencoderKL:
    """A VAE with 4 latent channels that downsamples by 2."""
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )


def _tiny_text_config(tokenizer: CLIPTokenizer, width: int) -> CLIPTextConfig:
    """A one-layer CLIP text encoder ``width`` wide (its projection too) for ``tokenizer``."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny_inpaint_pipeline(
    directory: Path, *, unet_in_channels: int = 9, seed: int = 0
) -> Path:
    """Build a tiny ``StableDiffusionInpaintPipeline`` and ``save_pretrained`` it to ``directory``.

    ``unet_in_channels=9`` is the layout of dedicated inpainting checkpoints (noisy latents +
    mask + masked-image latents); ``4`` is a plain text-to-image UNet, which the inpainting
    pipeline also accepts and which can be shared with an image-to-image pipeline. The VAE
    downsamples by 2 and the UNet once more, so image sides must be multiples of 4 (any
    multiple of 8 works). Returns ``directory``.
    """
    torch.manual_seed(seed)
    unet = _tiny_unet(unet_in_channels, cross_attention_dim=16)
    vae = _tiny_vae()
    tokenizer = _tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, 16))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    directory = Path(directory)
    pipe.save_pretrained(directory)
    return directory


def save_tiny_sdxl_inpaint_pipeline(directory: Path, *, seed: int = 0) -> Path:
    """Build a tiny ``StableDiffusionXLInpaintPipeline`` in the layout of
    ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1`` and ``save_pretrained`` it to
    ``directory``: two text encoders (the second with a projection, whose pooled output and the
    size/crop "time ids" condition the UNet), a 9-channel UNet, no aesthetic score. Returns
    ``directory``."""
    torch.manual_seed(seed)
    width = 16  # of each text encoder; the UNet attends to both, concatenated
    time_embed = 8
    unet = _tiny_unet(
        9,
        cross_attention_dim=2 * width,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed,
        # the pooled text (width) and 6 time ids: original size, crop corner, target size
        projection_class_embeddings_input_dim=width + 6 * time_embed,
    )
    vae = _tiny_vae()
    tokenizer, tokenizer_2 = _tiny_clip_tokenizer(), _tiny_clip_tokenizer()
    text_config = _tiny_text_config(tokenizer, width)
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )
    directory = Path(directory)
    pipe.save_pretrained(directory)
    return directory
