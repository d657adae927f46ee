"""The training-step planner (viva plan): its activation model against the memory a real step
adds on a CPU, and what it says about the production profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from viva_pipelines.config import load_settings
from viva_pipelines.model.transformer import tiny_transformer_config
from viva_pipelines.train.config import LoraOptions
from viva_pipelines.train.optimizers import state_floats
from viva_pipelines.train.runs import sft_config
from viva_pipelines.train.sft import build_model
from viva_pipelines.train.sizing import (
    GIB,
    TINY_INSTRUCTOR_WIDTH,
    checkpointed_activations,
    dit_builder,
    latent_shape,
    measure_pass,
    plan_grpo,
    plan_sft,
    plan_table,
    stack_pass,
)

CONFIG = tiny_transformer_config(16, 64, heads=4, head_dim=32, dual_layers=2, single_layers=2)
LATENT, TOKENS, BATCH = (16, 5, 32, 32), 64, 8

#: One training step of the DiT above on the CPU, in a fresh process: a step at batch 1 first
#: (AdamW's moments, lazily loaded kernels), then the resident memory a step at BATCH adds (the
#: peak resident size is reset before it, so what came before cannot count).
#: glibc's malloc returns freed blocks to the system at once (MALLOC_MMAP_THRESHOLD_ below),
#: so the resident size follows what is alive.
MEASURE = """
import json, sys, torch
from diffusers import HunyuanVideoTransformer3DModel
torch.set_num_threads(1)
config, latent, tokens, batch, checkpointing = json.loads(sys.argv[1])
torch.manual_seed(0)
model = HunyuanVideoTransformer3DModel(**config)
if checkpointing:
    model.enable_gradient_checkpointing()
optimizer = torch.optim.AdamW(model.parameters())
c, t, h, w = latent
inputs = dict(
    hidden_states=torch.randn(batch, config["in_channels"], t, h, w),
    timestep=torch.full((batch,), 500.0),
    encoder_hidden_states=torch.randn(batch, tokens, config["text_embed_dim"]),
    encoder_attention_mask=torch.ones(batch, tokens, dtype=torch.bool),
    pooled_projections=torch.randn(batch, config["pooled_projection_dim"]),
)
def step(n):
    out = model(**{k: v[:n] for k, v in inputs.items()}, return_dict=False)[0]
    out.float().square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
step(1)
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
before = status("VmRSS")
step(batch)
peak = status("VmHWM")
print(json.dumps({"added": peak - before, "parameters": sum(p.numel() for p in model.parameters())}))
"""


def _measured(checkpointing: bool) -> dict:
    doc = json.dumps([CONFIG, LATENT, TOKENS, BATCH, checkpointing])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, doc], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _build():
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(**CONFIG)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_planned_step_memory_is_within_15_percent_of_a_measured_cpu_step(checkpointing):
    """What a step adds to a process that already holds weights and AdamW's moments: the
    activations of the micro-batch and the gradients (4 bytes a parameter)."""
    measured = _measured(checkpointing)
    full = measure_pass(_build, LATENT, TOKENS, BATCH)
    activations = full.saved_bytes
    if checkpointing:
        kept = measure_pass(_build, LATENT, TOKENS, BATCH, checkpointing=True)
        activations = checkpointed_activations(full, kept, blocks=4)
        assert kept.saved_bytes < full.saved_bytes / 4  # only the blocks' inputs are kept
    planned = activations + 4 * measured["parameters"]
    assert planned == pytest.approx(measured["added"], rel=0.15), (planned, measured)


def test_flops_grow_with_the_tokens_and_backward_costs_twice_forward():
    small = measure_pass(_build, (16, 1, 16, 16), TOKENS, 1)
    large = measure_pass(_build, (16, 4, 16, 16), TOKENS, 1)
    # 64 -> 256 video tokens beside 64 text tokens: 2.5x the tokens, a bit more for attention
    assert 2.5 < large.forward_flops / small.forward_flops < 3.5
    assert small.backward_flops == pytest.approx(2 * small.forward_flops, rel=0.1)


@pytest.mark.parametrize(
    ("dual", "single", "lora", "checkpointing"),
    [(3, 2, None, False), (0, 3, None, True), (2, 0, LoraOptions(rank=4), True)],
)
def test_a_pass_measured_on_two_blocks_of_each_kind_extends_exactly_to_the_stack(
    dual, single, lora, checkpointing
):
    """What viva plan measures on a small stack is what the whole model's pass keeps and
    computes, to the byte and the FLOP (a kind may be absent)."""
    config = {**CONFIG, "num_layers": dual, "num_single_layers": single}
    build = dit_builder(config, lora)
    whole = measure_pass(build, LATENT, TOKENS, BATCH, checkpointing=checkpointing)
    extended = stack_pass(config, LATENT, TOKENS, BATCH, lora=lora, checkpointing=checkpointing)
    assert extended == whole
    fewer = stack_pass(
        {**config, "num_layers": 1, "num_single_layers": min(1, single)}, LATENT, TOKENS, BATCH
    )
    assert fewer.forward_flops < whole.forward_flops  # the blocks' count is in it


def test_the_demo_profile_plans_the_model_its_sft_builds():
    """viva plan on the embedded profile sizes the from-scratch DiT that SFT trains."""
    settings = load_settings(REPO / "conf", include_local=False)
    config = sft_config(settings, "any")
    channels = latent_shape(settings)[0]
    model = build_model(config, channels, TINY_INSTRUCTOR_WIDTH)
    plan = plan_sft(settings)
    assert plan.parameters == sum(p.numel() for p in model.parameters())
    assert plan.micro_batch == config.optim.batch_size and plan.activations > 0
    # The demo's Muon: one momentum per entry of the blocks' matrices, two AdamW moments for
    # the other parameters
    assert plan.optimizer == 4 * state_floats(model.named_parameters(), config.optim.optimizer)
    assert 4 * plan.parameters < plan.optimizer < 8 * plan.parameters


def test_viva_plan_refuses_a_gpu_without_memory_or_speed(capsys):
    """--gpu-tflops 0 was a ZeroDivisionError traceback, and a negative or NaN size a table of
    "NO" rows: the GPU's figures are finite and positive, checked before planning."""
    from viva_pipelines import cli

    for flag, value in [("--gpu-tflops", "0"), ("--gpu-gib", "-5"), ("--gpu-gib", "nan")]:
        with pytest.raises(SystemExit) as exited:
            cli.main(["plan", flag, value])
        assert exited.value.code == 2
        assert f"argument {flag}: must be a finite number above 0, got {value}" in (
            capsys.readouterr().err
        )


@pytest.fixture(scope="module")
def prod_plans():
    prod = load_settings(REPO / "conf", "prod", include_local=False)
    return plan_sft(prod), plan_grpo(prod)


@pytest.mark.slow
def test_the_prod_sft_fits_an_80_gb_gpu_only_with_checkpointing(prod_plans):
    sft, _ = prod_plans
    assert 12e9 < sft.parameters < 14e9  # HunyuanVideo-13B, widened
    assert sft.ranks == 8 and sft.sharded and sft.micro_batch == 1
    assert sft.weights + sft.gradients + sft.optimizer == pytest.approx(16 * sft.parameters / 8)
    assert sft.peak(checkpointing=True) < 0.9 * 80 * GIB < sft.peak(checkpointing=False)


@pytest.mark.slow
def test_the_prod_grpo_trains_a_lora_on_one_large_gpu(prod_plans):
    _, grpo = prod_plans
    assert 0 < grpo.trainable < 0.02 * grpo.parameters  # the LoRA alone trains
    assert grpo.gradients == 4 * grpo.trainable and grpo.optimizer == 8 * grpo.trainable
    assert grpo.peak(checkpointing=True) < 0.9 * 141 * GIB
    table = plan_table(list(prod_plans), gpu_gib=141)
    assert table.count("| yes (141 GiB) |") == 2


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_at_toy_size(tmp_path):
    """bench/gpu_check.py can only measure on a GPU; --tiny runs all of its code on the CPU, so
    the script is known to work before a device is lent."""
    out = tmp_path / "gpu_check.md"
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[2:]] == [
        "| 1. MFU, 1 dual + 1 single block at HunyuanVideo width",
        "| 2. peak memory, one SFT step of the widened DiT (LoRA, checkpointing, 1 clip)",
        "| 3. peak memory, VAE encode",
        "| 3. peak memory, VAE decode",
    ]
    assert "viva plan's model" in rows[3]
