"""The production profile's GPU check: one table from one run, within 8 minutes on one GPU.

    VIVA_ENV=prod .venv/bin/python bench/gpu_check.py [--out gpu_check.md] [--peak-tflops 989]
    .venv/bin/python bench/gpu_check.py --tiny      # the same code at toy sizes on the CPU

Three measurements at conf/prod's training geometry (``sft.data``: 33 frames of 848x480, a
9x60x106 latent grid through the HunyuanVideo VAE, 14 310 video tokens, beside the 768
condition tokens of an instruction and its first frame through LLaVA):

1. MFU of HunyuanVideo-width blocks (bench/sft_step.py's DiT: 1 dual- and 1 single-stream
   block of d = 3072) at that token count: fp32 master weights under bf16 autocast (the SFT
   loop's setup), checkpointing off, forward + backward; model FLOPs from FlopCounterMode;
   MFU against --peak-tflops (989: H100 SXM dense bf16, the H200's too).
2. Peak memory of one real-size SFT step of the widened HunyuanVideo-13B DiT (48 input
   channels) with random weights in bf16: full AdamW on 13B needs ~205 GB of states, more
   than one GPU has, so the trainable part is conf/prod's Edit-GRPO LoRA (``grpo.lora``), with
   gradient checkpointing, one clip: forward, backward, AdamW step. Beside it, what
   ``viva plan``'s model predicts for that step (frozen bf16 weights, LoRA weights, gradients
   and moments, checkpointed activations; viva_pipelines/train/sizing.py).
3. The HunyuanVideo VAE (diffusers' AutoencoderKLHunyuanVideo architecture, random weights,
   bf16) with tiling and slicing: peak memory and time to encode one clip of that geometry
   and to decode its latents.

Peak memory is torch.cuda.max_memory_allocated after a reset (on the CPU it reads "-"). The
table goes to stdout and, with --out, to that file.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import machine, note, sync
from sft_step import HUNYUAN_WIDTH, build_dit, counted_flops, dit_inputs, time_dit

from viva_pipelines.config import load_settings
from viva_pipelines.config.schema import Settings
from viva_pipelines.model.transformer import tiny_transformer_config
from viva_pipelines.settings import default_conf_dir
from viva_pipelines.train.sizing import (
    GIB,
    INSTRUCTOR_TOKENS,
    block_count,
    checkpointed_activations,
    default_dtype,
    dit_builder,
    dit_config,
    latent_shape,
    measure_pass,
    parameter_counts,
    step_inputs,
)

#: --tiny: the DiT blocks, the whole DiT and the clip at toy sizes, for the CPU.
TINY_GRID, TINY_TEXT_TOKENS, TINY_FRAMES = (2, 8, 8), 16, (5, 32, 32)


def peak_memory(device: torch.device) -> Callable[[], float | None]:
    """Resets the device's peak-memory counter; the returned function reads it (GiB)."""
    if device.type != "cuda":
        return lambda: None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return lambda: torch.cuda.max_memory_allocated(device) / GIB


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


def block_mfu(device: torch.device, grid: tuple[int, int, int], text: int, args) -> list[list]:
    """Section 1: HunyuanVideo-width blocks at the profile's token count."""
    config = dict(HUNYUAN_WIDTH)
    if args.tiny:
        config |= {"num_attention_heads": 2, "attention_head_dim": 32, "text_embed_dim": 64}
        config |= {"pooled_projection_dim": 64, "rope_axes_dim": (8, 12, 12)}
    note(f"1. blocks of d = {config['num_attention_heads'] * config['attention_head_dim']}")
    model = build_dit(config, device, "fp32")
    inputs = dit_inputs(config, grid, text, device)
    flops = counted_flops(model, inputs)
    result = time_dit(model, inputs, checkpointing=False, steps=args.steps, warmup=1)
    seconds = statistics.median(result.seconds)
    achieved = flops / seconds / 1e12
    tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    del model, inputs
    return [
        [
            "1. MFU, 1 dual + 1 single block at HunyuanVideo width",
            f"{achieved / args.peak_tflops:.1%}",
            f"{achieved:.1f} TFLOP/s of {args.peak_tflops:g}; {flops / 1e12:.2f} TFLOP per "
            f"fwd+bwd in {seconds * 1e3:.0f} ms; {tokens} video + {text} text tokens; peak "
            f"{gib(result.peak_bytes / GIB if device.type == 'cuda' else None)}",
        ]
    ]


def _editing_dit(settings: Settings, args) -> dict[str, Any]:
    if args.tiny:
        return tiny_transformer_config(16, 64, out_channels=16)
    return dit_config(settings)


def sft_step_memory(
    device: torch.device, settings: Settings, latent: tuple[int, ...], text: int, args
) -> list[list]:
    """Section 2: one real-size step of the widened DiT, LoRA-trained, against the planner."""
    config, lora = _editing_dit(settings, args), settings.grpo.lora
    build = dit_builder(config, lora)
    note("2. planning the step on the meta device")
    full = measure_pass(build, latent, text, 1, dtype=torch.bfloat16)
    kept = measure_pass(build, latent, text, 1, dtype=torch.bfloat16, checkpointing=True)
    parameters, trainable = parameter_counts(build)
    frozen = parameters - trainable
    # All in bf16 here: frozen and LoRA weights, LoRA gradients and AdamW's two moments.
    planned = 2 * frozen + 2 * trainable + 2 * trainable + 4 * trainable
    activations = checkpointed_activations(full, kept, block_count(config))
    planned = (planned + activations) / GIB
    note(f"2. building the DiT ({(frozen + trainable) / 1e9:.2f} B parameters, bf16)")
    started = time.perf_counter()
    with torch.device(device), default_dtype(torch.bfloat16):
        model = build()
    model.enable_gradient_checkpointing()
    model.train()
    built = time.perf_counter() - started
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    inputs = step_inputs(config, latent, text, 1, device=device, dtype=torch.bfloat16)
    read_peak = peak_memory(device)
    sync(device)
    started = time.perf_counter()
    output = model(**inputs, return_dict=False)[0]
    output.float().square().mean().backward()
    optimizer.step()
    sync(device)
    seconds = time.perf_counter() - started
    measured = read_peak()
    error = "" if measured is None else f"; planner error {planned / measured - 1:+.0%}"
    del model, optimizer, inputs, output
    return [
        [
            "2. peak memory, one SFT step of the widened DiT (LoRA, checkpointing, 1 clip)",
            gib(measured),
            f"viva plan's model: {planned:.1f} GiB{error}; {(frozen + trainable) / 1e9:.2f} B "
            f"parameters ({trainable / 1e6:.0f} M LoRA, rank {lora.rank}); step {seconds:.1f} s, "
            f"build {built:.0f} s",
        ]
    ]


def vae_memory(device: torch.device, frames: tuple[int, int, int], args) -> list[list]:
    """Section 3: the VAE's tiled encode and decode of one clip."""
    from diffusers import AutoencoderKLHunyuanVideo

    if args.tiny:
        from viva_pipelines.embedded.vae import tiny_hunyuan_vae

        vae = tiny_hunyuan_vae().to(device)
    else:
        with torch.device(device), default_dtype(torch.bfloat16):
            vae = AutoencoderKLHunyuanVideo()
    vae.enable_tiling()
    vae.enable_slicing()
    vae.eval()
    dtype = next(vae.parameters()).dtype
    count, height, width = frames
    clip = torch.rand(1, 3, count, height, width, device=device, dtype=dtype) * 2 - 1
    rows = []
    with torch.no_grad():
        read_peak = peak_memory(device)
        started = time.perf_counter()
        latents = vae.encode(clip).latent_dist.mode()
        sync(device)
        encode_s, encode_peak = time.perf_counter() - started, read_peak()
        read_peak = peak_memory(device)
        started = time.perf_counter()
        decoded = vae.decode(latents).sample
        sync(device)
        decode_s, decode_peak = time.perf_counter() - started, read_peak()
    shape = "x".join(map(str, latents.shape[2:]))
    what = f"{count}x{height}x{width} clip, latents {shape} -> {tuple(decoded.shape[2:])}, tiling + slicing, {dtype}"
    rows.append(["3. peak memory, VAE encode", gib(encode_peak), f"{what}; {encode_s:.1f} s"])
    rows.append(["3. peak memory, VAE decode", gib(decode_peak), f"{what}; {decode_s:.1f} s"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of section 1")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("no CUDA device: run on a GPU, or --tiny for the CPU smoke run")
    settings = load_settings(default_conf_dir(), "prod", include_local=False)
    latent = latent_shape(settings)
    data = settings.sft.data
    frames = (data.frames, data.height, data.width)
    text = INSTRUCTOR_TOKENS["pretrained"]
    if args.tiny:
        latent, frames, text = (16, *TINY_GRID), TINY_FRAMES, TINY_TEXT_TOKENS
    rows = block_mfu(device, latent[1:], text, args)
    rows += sft_step_memory(device, settings, latent, text, args)
    rows += vae_memory(device, frames, args)
    lines = [
        "## GPU check of the prod profile",
        "",
        machine(device),
        "",
        "| measurement | value | detail |",
        "| --- | --- | --- |",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    text_out = "\n".join(lines) + "\n"
    print(text_out)
    if args.out:
        args.out.write_text(text_out)


if __name__ == "__main__":
    main()
