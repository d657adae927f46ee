"""Where the training runs live, and their configs assembled from this project's settings.

One folder per run, named by its config's fingerprint: ``{asset}/{fingerprint}/`` holds
``checkpoints/`` (:mod:`viva_pipelines.train.checkpoint`), ``summary.json`` (the run's figures
and where its cache is) and the result, ``model/`` (SFT: a ``VivaEditPipeline`` directory) or
``lora/`` (Edit-GRPO: the adapter). The fingerprint is also the asset's data version, so a
re-run of the same config and data resumes (or finds finished) the same folder, and downstream
steps find a run's files from the version alone. No torch import: the Dagster definitions and
the benches read this.
"""

from __future__ import annotations

from viva_pipelines.config.schema import Settings
from viva_pipelines.qc.dataset import MANIFEST_KEY as DATASET_MANIFEST
from viva_pipelines.rewards.models import RECORD_KEY as REWARDS_RECORD
from viva_pipelines.storage import Storage
from viva_pipelines.train.config import TINY, GrpoConfig, RunConfig, SftConfig

SFT_PREFIX = "sft_checkpoint"
GRPO_PREFIX = "grpo_lora"
#: Where ``instructor_model`` records the instructor that SFT loads.
INSTRUCTOR_RECORD = "instructor_model/instructor.json"


def sft_run(version: str) -> str:
    """The run folder of the SFT run whose fingerprint (data version) is ``version``."""
    return f"{SFT_PREFIX}/{version}"


def grpo_run(version: str) -> str:
    return f"{GRPO_PREFIX}/{version}"


def summary_key(run: str) -> str:
    return f"{run}/summary.json"


def input_failure_key(run: str) -> str:
    """Written by a trainer whose inputs cannot train (a ``ValueError``: too little data, a
    batch that does not split, …): retrying the same inputs cannot help."""
    return f"{run}/input_failure.json"


def model_key(run: str) -> str:
    """The model directory of an SFT run."""
    return f"{run}/model"


def lora_key(run: str) -> str:
    """The LoRA adapter of an Edit-GRPO run."""
    return f"{run}/lora"


def reward_curves_key(run: str) -> str:
    """The reward curves (PNG) of an Edit-GRPO run."""
    return f"{run}/reward_curves.png"


def run_key(config: RunConfig) -> str:
    """The run's name under its asset's prefix (the fingerprint of its config): also the
    asset's data version."""
    return config.output_prefix.rsplit("/", 1)[-1]


def dataset_location(settings: Settings, dataset_version: str) -> dict[str, str | None]:
    """Where a training run finds ``qc_dataset`` (the ``data`` keys every run config has)."""
    return {
        "storage_root": settings.storage.root,
        "manifest_key": DATASET_MANIFEST,
        "dataset_version": dataset_version,
        "endpoint_url": settings.storage.s3.endpoint_url,
        "region_name": settings.storage.s3.region_name,
    }


def instructor_location(store: Storage) -> str | None:
    """The instructor ``instructor_model`` recorded (None before its first materialization)."""
    if not store.exists(INSTRUCTOR_RECORD):
        return None
    return store.read_json(INSTRUCTOR_RECORD)["location"]


def codec_spec(settings: Settings) -> dict:
    """``sft.model.codec`` with its weights: ``models.vae`` for the HunyuanVideo VAE when the
    spec names none."""
    codec = dict(settings.sft.model.codec)
    if codec.get("kind") == "hunyuan_vae" and not codec.get("model") and settings.models.vae:
        codec["model"] = settings.models.vae
    return codec


def sft_config(
    settings: Settings, dataset_version: str, instructor: str | None = None
) -> SftConfig:
    """The SFT run of these settings: the ``sft`` section plus storage, dataset version and
    weights (``models.*``), in the folder its fingerprint names. ``instructor``: where
    ``instructor_model`` put the instructor (:func:`instructor_location`); without it (and
    without ``models.instructor``) the untrained tiny one is built."""
    sft = settings.sft
    codec = codec_spec(settings)
    doc = {
        "output_prefix": SFT_PREFIX,
        "data": {**sft.data.model_dump(), **dataset_location(settings, dataset_version)},
        "model": {
            **sft.model.model_dump(),
            "codec": codec,
            "instructor": settings.models.instructor or instructor or TINY,
            "transformer": settings.models.transformer,
        },
        "optim": sft.optim.model_dump(),
        "loss": sft.loss.model_dump(),
        "eval": sft.eval.model_dump(),
        "runtime": {**sft.runtime.model_dump(), "threads": sft.threads_per_process},
    }
    config = SftConfig.from_mapping(doc, origin="conf: sft")
    return config.model_copy(update={"output_prefix": sft_run(config.fingerprint())})


def grpo_config(
    settings: Settings, store: Storage, sft_version: str, dataset_version: str
) -> GrpoConfig:
    """The Edit-GRPO run of these settings over the SFT run ``sft_version``: its model
    directory, its cache (source latents and tokens) and the reward models' record, in the
    folder its own fingerprint names."""
    grpo = settings.grpo
    sft = sft_run(sft_version)
    summary = store.read_json(summary_key(sft))
    doc = {
        "output_prefix": GRPO_PREFIX,
        "data": dataset_location(settings, dataset_version),
        "sft_model": model_key(sft),
        "sft_cache": store.key_of(summary["cache_uri"]),
        "rewards_record": REWARDS_RECORD,
        "reward_weights": settings.rewards.weights.model_dump(),
        "lora": grpo.lora.model_dump(),
        "sampling": grpo.sampling.model_dump(),
        "optim": grpo.optim.model_dump(),
        "eval": grpo.eval.model_dump(),
        "runtime": {**grpo.runtime.model_dump(), "threads": grpo.threads_per_process},
    }
    config = GrpoConfig.from_mapping(doc, origin="conf: grpo")
    return config.model_copy(update={"output_prefix": grpo_run(config.fingerprint())})
