"""The production profile resolves to the paper's recipe, fits the hardware it asks for, and
refuses a batch that cannot be split."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from viva_pipelines.config import ConfigError, load_settings


@pytest.fixture(scope="module")
def prod():
    return load_settings(REPO / "conf", "prod", include_local=False)


def test_sft_is_the_papers_recipe(prod):
    sft = prod.sft
    assert (sft.optim.lr, sft.optim.batch_size, sft.optim.max_steps) == (2e-5, 128, 12000)
    assert sft.data.video_fraction == 0.4
    assert (sft.data.frames - 1) % 4 == 0  # 4k+1 for the HunyuanVideo VAE
    assert sft.data.height % 16 == 0 and sft.data.width % 16 == 0  # VAE 8x, then 2x2 patches
    assert sft.model.codec["kind"] == "hunyuan_vae" and sft.model.codec["enable_tiling"]
    assert prod.models.transformer and prod.models.vae and prod.models.instructor
    assert sft.runtime.parallel == "fsdp" and sft.runtime.mixed_precision == "bf16"
    assert sft.runtime.gradient_checkpointing == "on"


def test_sft_processes_match_the_gpus_its_pod_requests(prod):
    limits = prod.execution.asset_tags["sft_checkpoint"]["dagster-k8s/config"]["container_config"]
    gpus = int(limits["resources"]["limits"]["nvidia.com/gpu"])
    assert prod.sft.nproc_per_node == gpus == 8
    per_rank = prod.sft.optim.batch_size // prod.sft.nproc_per_node
    assert per_rank % prod.sft.optim.grad_accumulation == 0


def test_grpo_trains_a_lora_without_guidance_in_its_rollouts(prod):
    grpo = prod.grpo
    assert grpo.lora.rank > 0 and grpo.sampling.same_noise
    assert grpo.sampling.guidance_scale == 1.0 and grpo.optim.beta == 0.0
    assert grpo.sampling.sde_window and grpo.sampling.sde_window <= grpo.sampling.num_steps
    # Flow-GRPO's multi-step SDE rollouts: the last step, to sigma 0, is the ODE's
    assert grpo.sampling.num_steps > 1 and grpo.sampling.final_noise == 0.0


def test_a_batch_that_does_not_split_over_processes_and_micro_batches_is_refused():
    with pytest.raises(ConfigError, match=r"nproc_per_node 8 x optim.grad_accumulation 3"):
        load_settings(
            REPO / "conf",
            "prod",
            include_local=False,
            overrides={"sft.optim.grad_accumulation": 3},
        )
