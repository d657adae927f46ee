"""What an SFT optimizer step costs on the demo's DiT: AdamW against Muon on the blocks'
matrices with AdamW on the rest (``sft.optim.optimizer``), on random gradients.

    .venv/bin/python bench/optimizer_step.py [--steps 50]

Prints one row per optimizer: milliseconds per ``step()`` (the median of ``--steps`` after 5
warm-up steps) and the float32 values of state it keeps. The forward and backward pass of a
demo SFT step take 100-250 ms on 2 CPU cores (``bench/sft_step.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_common import note

from viva_pipelines.config.loader import load_settings
from viva_pipelines.settings import default_conf_dir
from viva_pipelines.train.optimizers import build_optimizer, state_floats
from viva_pipelines.train.runs import sft_config
from viva_pipelines.train.sft import build_model
from viva_pipelines.train.sizing import TINY_INSTRUCTOR_WIDTH, latent_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    settings = load_settings(default_conf_dir())
    config = sft_config(settings, "bench")
    torch.set_num_threads(config.runtime.threads or torch.get_num_threads())
    model = build_model(config, latent_shape(settings)[0], TINY_INSTRUCTOR_WIDTH)
    generator = torch.Generator().manual_seed(0)
    for parameter in model.parameters():
        parameter.grad = 1e-3 * torch.randn(parameter.shape, generator=generator)
    optim = config.optim
    rows = ["| optimizer | ms per step | state (float32 values) |", "| --- | --- | --- |"]
    for kind in ("adamw", "muon"):
        optimizer = build_optimizer(model, kind, optim.lr, optim.betas, optim.weight_decay)
        times = []
        for index in range(5 + args.steps):
            started = time.perf_counter()
            optimizer.step()
            if index >= 5:
                times.append(time.perf_counter() - started)
        state = state_floats(model.named_parameters(), kind)
        rows.append(f"| {kind} | {1000 * statistics.median(times):.1f} | {state:,} |")
        note(f"{kind}: done")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
