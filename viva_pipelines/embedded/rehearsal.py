"""The rehearsal's models: every ``models.*`` entry of the production profile, in the format
its loader reads, at toy size (``conf/rehearsal``; docs/operations.md, "Rehearsal").

Random weights: a rehearsal tests that the pieces fit (channel counts after widening, the
VAE's frame counts, tokenizers, FSDP over the real module names, peft targets, checkpoint
layouts), not what the models do. Written locally and offline, the same files for the same
seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Width of the tiny instructor's hidden states, which the DiT reads as text tokens.
INSTRUCTOR_WIDTH = 64
#: The HunyuanVideo VAE's latent channels: what the DiT predicts and ``widen_patch_embedding``
#: triples (noisy | source | reference).
LATENT_CHANNELS = 16
#: The width of the pooled text vector the text-to-video DiT was trained on (CLIP-L's 768 in
#: HunyuanVideo): unequal to the instructor's, so the rehearsal re-makes that input as
#: production does (``reproject_pooled_input``).
POOLED_WIDTH = 24

#: ``models.*`` entry -> (its path under the rehearsal's model root, the subfolder the model is
#: read from: the transformer and the VAE share one folder, as in the hub repository).
LAYOUT = {
    "instructor": ("llava-llama-3", ""),
    "transformer": ("hunyuan-video", "transformer"),
    "vae": ("hunyuan-video", "vae"),
    "inpainting": ("sdxl-inpainting", ""),
    "grounding_dino": ("grounding-dino", ""),
    "sam2": ("sam2.1-hiera-tiny.pt", ""),
    "clip": ("clip", ""),
    "pickscore": ("pickscore", ""),
}


def _sam2_checkpoint(path: Path, config: str) -> None:
    """A SAM 2 checkpoint file as Meta publishes them: ``{"model": state_dict}`` (random
    weights from the caller's seeded generator)."""
    from sam2.build_sam import build_sam2

    model = build_sam2(config, ckpt_path=None, device="cpu", mode="eval")
    torch.save({"model": model.state_dict()}, path)


def write_rehearsal_models(root: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write every rehearsal model under ``root`` (skipping those already there) and return
    ``models.*`` entry -> path, as ``conf/rehearsal`` names them."""
    from diffusers import HunyuanVideoTransformer3DModel

    from viva_pipelines.embedded.clip import build_tiny_clip
    from viva_pipelines.embedded.diffusers import save_tiny_sdxl_inpaint_pipeline
    from viva_pipelines.embedded.instructor import build_tiny_instructor, instruction_vocabulary
    from viva_pipelines.embedded.masks import TINY_SAM2_CONFIG, build_tiny_grounding_dino
    from viva_pipelines.embedded.vae import tiny_hunyuan_vae
    from viva_pipelines.model.transformer import tiny_transformer_config

    root = Path(root)
    texts = instruction_vocabulary()
    writers = {
        "instructor": lambda p: build_tiny_instructor(
            p, texts, seed=seed, hidden_size=INSTRUCTOR_WIDTH
        ),
        "transformer": lambda p: HunyuanVideoTransformer3DModel(
            **tiny_transformer_config(LATENT_CHANNELS, INSTRUCTOR_WIDTH, pooled_dim=POOLED_WIDTH)
            | {"in_channels": LATENT_CHANNELS}  # text-to-video: the noisy latents alone
        ).save_pretrained(p),
        "vae": lambda p: tiny_hunyuan_vae(seed, latent_channels=LATENT_CHANNELS).save_pretrained(p),
        "inpainting": lambda p: save_tiny_sdxl_inpaint_pipeline(p, seed=seed),
        "grounding_dino": lambda p: build_tiny_grounding_dino(p, seed=seed),
        "sam2": lambda p: _sam2_checkpoint(p, TINY_SAM2_CONFIG),
        "clip": lambda p: build_tiny_clip(p, texts, seed=seed),
        "pickscore": lambda p: build_tiny_clip(p, texts, seed=seed + 1),
    }
    paths = {}
    for entry, (name, subfolder) in LAYOUT.items():
        paths[entry] = root / name
        written = paths[entry] / subfolder if subfolder else paths[entry]
        if not written.exists():
            written.parent.mkdir(parents=True, exist_ok=True)
            with torch.random.fork_rng(devices=[]):  # seeded, the caller's state untouched
                torch.manual_seed(seed)
                writers[entry](written)
    return paths
