"""models.* entries checked from their configs before the SFT starts: one line per problem,
naming the key and what was found; a good set passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from viva_pipelines.config import load_settings
from viva_pipelines.model.transformer import tiny_transformer_config
from viva_pipelines.train.preflight import ModelConfigError, check_training_models

HUNYUAN_VAE = {"kind": "hunyuan_vae", "subfolder": "vae"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A text-to-video DiT (4 latent channels, 64-wide text), its VAE and a 64-wide LLaVA."""
    from diffusers import HunyuanVideoTransformer3DModel

    from viva_pipelines.embedded.instructor import build_tiny_instructor
    from viva_pipelines.embedded.vae import tiny_hunyuan_vae

    root = tmp_path_factory.mktemp("models")
    config = {**tiny_transformer_config(4, 64, pooled_dim=24), "in_channels": 4}
    HunyuanVideoTransformer3DModel(**config).save_pretrained(root / "hunyuan" / "transformer")
    tiny_hunyuan_vae().save_pretrained(root / "hunyuan" / "vae")
    build_tiny_instructor(root / "llava", ["remove the red circle"])
    return {"dit": root / "hunyuan", "llava": root / "llava", "root": root}


def settings(**models: object):
    overrides = {f"models.{key}": value for key, value in models.items()}
    overrides |= {"sft.model.transformer_subfolder": "transformer", "sft.model.codec": HUNYUAN_VAE}
    return load_settings(REPO / "conf", include_local=False, overrides=overrides)


def problems(**models: object) -> list[str]:
    with pytest.raises(ModelConfigError) as caught:
        check_training_models(settings(**models))
    return str(caught.value).splitlines()


def test_a_fitting_set_passes_and_the_embedded_stand_ins_need_nothing(models):
    dit, llava = str(models["dit"]), str(models["llava"])
    check_training_models(settings(transformer=dit, vae=dit, instructor=llava))
    check_training_models(load_settings(REPO / "conf", include_local=False))


def test_missing_models_are_named_with_where_they_were_looked_for(models, tmp_path):
    found = problems(
        transformer=str(tmp_path / "nowhere"), vae="nobody/not-cached", instructor="./gone"
    )
    assert found[0].startswith("models.transformer: ") and "transformer/config.json" in found[0]
    assert found[1].startswith("models.vae: 'nobody/not-cached' has no vae/config.json")
    assert "local Hugging Face cache" in found[1]
    assert found[2].startswith("models.instructor: './gone' has no config.json")


def test_the_wrong_architecture_is_named(models, tmp_path):
    """A VAE where the DiT belongs, a DiT where the VAE belongs, a DiT as the instructor."""
    swapped = tmp_path / "swapped"
    for folder, config_of in (("transformer", "vae"), ("vae", "transformer")):
        (swapped / folder).mkdir(parents=True)
        source = models["dit"] / config_of / "config.json"
        (swapped / folder / "config.json").write_text(source.read_text())
    instructor = str(models["dit"] / "transformer")
    found = problems(transformer=str(swapped), vae=str(swapped), instructor=instructor)
    assert found == [
        f"models.transformer: {str(swapped)!r} is a AutoencoderKLHunyuanVideo, not a "
        "HunyuanVideoTransformer3DModel",
        f"models.vae: {str(swapped)!r} is a HunyuanVideoTransformer3DModel, not a "
        "AutoencoderKLHunyuanVideo",
        f"models.instructor: {instructor!r} is a model of no declared architecture, not a "
        "LlavaForConditionalGeneration",
    ]


def test_channels_that_cannot_be_widened_and_widths_that_do_not_fit(models, tmp_path):
    odd = tmp_path / "odd" / "transformer"
    odd.mkdir(parents=True)
    config = json.loads((models["dit"] / "transformer" / "config.json").read_text())
    odd.joinpath("config.json").write_text(
        json.dumps(config | {"in_channels": 20, "out_channels": 16})
    )
    [found] = problems(transformer=str(odd.parent))
    assert "reads 20 channels and predicts 16" in found and "3 x 16 = 48" in found

    narrow = tmp_path / "narrow" / "transformer"
    narrow.mkdir(parents=True)
    narrow.joinpath("config.json").write_text(json.dumps(config | {"text_embed_dim": 32}))
    vae_config = json.loads((models["dit"] / "vae" / "config.json").read_text())
    (narrow.parent / "vae").mkdir()
    (narrow.parent / "vae" / "config.json").write_text(
        json.dumps(vae_config | {"latent_channels": 16})
    )
    found = problems(
        transformer=str(narrow.parent), vae=str(narrow.parent), instructor=str(models["llava"])
    )
    assert found == [
        f"models.vae: {str(narrow.parent)!r} makes 16 latent channels, the DiT of "
        "models.transformer predicts 4",
        f"models.instructor: {str(models['llava'])!r} has 64-wide hidden states, the DiT of "
        "models.transformer reads 32-wide tokens",
    ]


def test_sft_checkpoint_fails_before_training_naming_the_key(
    make_settings, tmp_path, run_sft_checkpoint
):
    settings = make_settings(
        **{"storage.root": str(tmp_path / "root"), "models.transformer": str(tmp_path / "nowhere")}
    )
    result, launched, _ = run_sft_checkpoint(settings)
    assert not result.success and launched == []
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1  # not retried: a wrong path does not fix itself
    assert "models.transformer: " in failures[0].step_failure_data.error.message
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []


def test_a_trainer_whose_inputs_cannot_train_fails_once_with_its_reason(
    make_settings, tmp_path, run_sft_checkpoint
):
    """The trainer runs (torchrun, Pipes) on a dataset manifest without the columns it needs: a
    ValueError, which no retry can fix, so the asset fails at once and says why."""
    settings = make_settings(**{"storage.root": str(tmp_path / "root")})
    result, _, _ = run_sft_checkpoint(settings, launch=True)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1
    message = failures[0].step_failure_data.error.message
    assert "viva_pipelines.train.sft: qc_dataset/manifest.parquet: missing column(s)" in message
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []
