"""The rehearsal profile: conf/prod at toy sizes, on tiny models in the production formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from viva_pipelines.config import load_settings
from viva_pipelines.embedded.rehearsal import LAYOUT, write_rehearsal_models
from viva_pipelines.train.preflight import check_training_models

#: Every key conf/rehearsal may change from prod: sizes and step counts, the CPU's device and
#: dtype, a local executor, the models, and the thresholds random weights cannot pass. Anything
#: else it changed would rehearse a configuration production does not run.
REHEARSAL_CHANGES = {
    "env",
    "execution.executor",
    *(f"models.{entry}" for entry in LAYOUT),
    "ingest.shard_size",
    "ingest.width",
    "ingest.height",
    "ingest.fps",
    "ingest.max_frames",
    # What random weights need (not sizes): their masks cover most of a frame, their VLM
    # scores are noise. The gates still run; only these thresholds let their output through.
    "masks.rules.max_area_fraction",
    "qc.thresholds.max_mask_fraction",
    "qc.vlm.min_score",
    "masks.sam2.config",
    "masks.sam2.image_size",
    "masks.sam2.device",
    "pairs.per_type",
    "pairs.diffusers.device",
    "pairs.diffusers.dtype",
    "pairs.diffusers.resolution",
    "pairs.diffusers.num_inference_steps",
    "sft.nproc_per_node",
    "sft.timeout_s",
    "sft.data.frames",
    "sft.data.height",
    "sft.data.width",
    "sft.optim.batch_size",
    "sft.optim.grad_accumulation",
    "sft.optim.max_steps",
    "sft.optim.warmup_steps",
    "sft.eval.every",
    "sft.eval.sample_every",
    "sft.eval.sample_steps",
    "sft.eval.val_samples",
    "sft.eval.sample_count",
    "sft.runtime.checkpoint_every",
    "grpo.sampling.group_size",
    "grpo.sampling.num_steps",
    "grpo.optim.iterations",
    "grpo.optim.accumulate",
    "grpo.eval.every",
    "grpo.eval.groups",
    "grpo.runtime.checkpoint_every",
    "benchmark.num_steps",
    "benchmark.previews_per_category",
    "benchmark.device",
    "inference.num_steps",
    "inference.device",
}


def _flat(doc: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _profile(env: str, **overrides: object):
    return load_settings(REPO / "conf", env, include_local=False, overrides=overrides or None)


def test_the_rehearsal_is_prod_but_for_sizes_devices_the_executor_and_the_models():
    prod, rehearsal = (
        _flat(_profile(env).model_dump(mode="json")) for env in ("prod", "rehearsal")
    )
    assert prod.keys() == rehearsal.keys()
    changed = {key for key in prod if prod[key] != rehearsal[key]}
    assert changed <= REHEARSAL_CHANGES, sorted(changed - REHEARSAL_CHANGES)
    # The recipe itself is prod's: spot-check what a careless override would break.
    for key in ("sft.optim.lr", "sft.model.codec.kind", "sft.runtime.parallel", "grpo.lora.rank"):
        assert rehearsal[key] == prod[key], key
    assert rehearsal["sft.runtime.mixed_precision"] == "bf16"
    # Each model is rehearsed, at the place `viva rehearsal-models` writes it.
    for entry, (name, _) in LAYOUT.items():
        assert prod[f"models.{entry}"], entry
        assert rehearsal[f"models.{entry}"] == f"data/rehearsal/models/{name}"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_rehearsal_models(tmp_path_factory.mktemp("rehearsal") / "models")


def test_the_models_are_written_once_and_load_where_production_loads_them(models):
    written = {path: path.stat().st_mtime_ns for path in models["vae"].rglob("*")}
    assert write_rehearsal_models(models["instructor"].parent) == models
    assert {path: path.stat().st_mtime_ns for path in models["vae"].rglob("*")} == written
    settings = _profile("rehearsal", **{f"models.{e}": str(p) for e, p in models.items()})
    check_training_models(settings)  # the DiT widens, the VAE's and instructor's widths fit

    from viva_pipelines.masks.sam2_backend import Sam2Tracker
    from viva_pipelines.pairs.diffusers_backend import DiffusersBackend
    from viva_pipelines.rewards.clip_rewards import ClipScorer

    m = settings.models
    Sam2Tracker(settings.masks.sam2, m.grounding_dino, m.sam2)
    pairs = DiffusersBackend(settings.pairs.diffusers, m.inpainting, m.img2img, seed=0)
    assert type(pairs.inpaint_pipeline).__name__ == "StableDiffusionXLInpaintPipeline"
    assert ClipScorer(m.clip).identity != ClipScorer(m.pickscore).identity
