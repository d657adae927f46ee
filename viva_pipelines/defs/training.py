"""``sft_checkpoint``: the context-aware SFT, launched as ``torchrun`` through Dagster Pipes."""

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from viva_pipelines.config import Settings
from viva_pipelines.config.schema import GrpoSettings, SftSettings
from viva_pipelines.defs.execution import step_options
from viva_pipelines.defs.resources import MlflowResource, StorageResource
from viva_pipelines.defs.runs import worker_tags
from viva_pipelines.previews import markdown_image
from viva_pipelines.qc import dataset as qc
from viva_pipelines.rewards.models import RECORD_KEY as REWARDS_RECORD
from viva_pipelines.storage import Storage
from viva_pipelines.tracking import (
    log_dataset_input,
    log_metrics,
    log_params,
    register_model_dir,
    set_tags,
    tag_model_version,
)
from viva_pipelines.train.config import GrpoConfig, RunConfig, SftConfig
from viva_pipelines.train.preflight import ModelConfigError, check_training_models
from viva_pipelines.train.runs import (
    grpo_config,
    input_failure_key,
    instructor_location,
    lora_key,
    model_key,
    reward_curves_key,
    run_key,
    sft_config,
    summary_key,
)
from viva_pipelines.train.supervision import launcher_environment

if TYPE_CHECKING:
    from mlflow import ActiveRun

INSTRUCTOR_CODE_VERSION = "instructor_model-1"
SFT_CODE_VERSION = "sft-2"
GRPO_CODE_VERSION = "grpo-1"
QC_DATASET = dg.AssetKey("qc_dataset")
INSTRUCTOR_MODEL = dg.AssetKey("instructor_model")
SFT_CHECKPOINT = dg.AssetKey("sft_checkpoint")
REWARD_MODELS = dg.AssetKey("reward_models")


def _latest_metadata(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dict:
    event = context.instance.get_latest_materialization_event(key)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return {name: getattr(value, "value", value) for name, value in metadata.items()}


def latest_data_version(context: dg.AssetExecutionContext, key: dg.AssetKey) -> str:
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(
            f"{key.to_user_string()} has not been materialized yet", allow_retries=False
        )
    return event.asset_materialization.tags.get("dagster/data_version", "")


def torchrun_command(nproc: int, module: str, config_path: str) -> list[str]:
    """``torchrun`` on this node (``--standalone`` picks a free rendezvous port)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        "--config",
        config_path,
    ]


#: The training process of a run config and the folder (under its output prefix) it registers.
TRAINERS: dict[type[RunConfig], tuple[str, str]] = {
    SftConfig: ("viva_pipelines.train.sft", "model"),
    GrpoConfig: ("viva_pipelines.train.grpo", "lora"),
}


def launch_training(
    context: dg.AssetExecutionContext,
    client: dg.PipesSubprocessClient,
    store: Storage,
    config: RunConfig,
    section: SftSettings | GrpoSettings,
    run: "ActiveRun",
    tracking_uri: str,
) -> tuple[dict, str]:
    """Run the config's training module (:data:`TRAINERS`) under torchrun with
    ``section.nproc_per_node`` processes through Pipes, logging into the MLflow ``run``; then
    register what it wrote as a new version of ``section.register_model``. Returns the
    reported metadata and the model version."""
    module, artifact = TRAINERS[type(config)]
    run_id = run.info.run_id
    tracking = config.tracking.model_copy(update={"tracking_uri": tracking_uri, "run_id": run_id})
    config = config.model_copy(update={"tracking": tracking})
    log_params(config.flat_params())
    context.log.info(f"training into {store.uri(config.output_prefix)}")
    with tempfile.TemporaryDirectory(prefix="viva-train-") as tmp:
        config_path = Path(tmp, "run.yaml")
        config.to_yaml(config_path)
        context.instance.add_run_tags(context.run_id, worker_tags())  # for dead-run cleanup
        failure_key = input_failure_key(config.output_prefix)
        store.delete(failure_key)  # an earlier attempt's, whose inputs may have changed since
        try:
            result = client.run(
                command=torchrun_command(section.nproc_per_node, module, str(config_path)),
                context=context,
                env=launcher_environment(context.run_id),
            ).get_materialize_result()
        except Exception:  # the trainer failed: retried (it resumes) unless its inputs cannot train
            if store.exists(failure_key):
                error = store.read_json(failure_key)["error"]
                raise dg.Failure(f"{module}: {error}", allow_retries=False) from None
            raise
        local = store.get_dir(f"{config.output_prefix}/{artifact}", Path(tmp, "model"))
        version = register_model_dir(local, run_id, section.register_model)
    return dict(result.metadata), version


def training_asset(
    settings: Settings, name: str, *, deps: list[dg.AssetKey], code_version: str
) -> Callable:
    """The decorator of a GPU training asset: pool ``gpu``, executor tags from
    ``execution.asset_tags``, retried on transient faults (it resumes from its checkpoint);
    all three from ``step_options``."""
    return dg.asset(
        name=name,
        deps=deps,
        code_version=code_version,
        group_name="training",
        kinds={"pytorch", "mlflow"},
        **step_options(settings, name),
    )


def build_training_defs(settings: Settings) -> dg.Definitions:
    sft, grpo = settings.sft, settings.grpo

    @dg.asset(
        name="instructor_model",
        deps=[QC_DATASET],
        code_version=INSTRUCTOR_CODE_VERSION,
        group_name="training",
        kinds={"pytorch", "mlflow"},
        **step_options(settings, "instructor_model"),
    )
    def instructor_model(
        context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        """The VLM instructor ``sft_checkpoint`` conditions on: ``models.instructor`` (a
        pretrained LLaVA, recorded as is), or the demo's tiny LLaVA pretrained here on
        ``qc_dataset``'s frames and texts to say where an edit goes and what the frame shows,
        with its held-out accuracy, registered in MLflow as ``viva-instructor``."""
        from viva_pipelines.train.instructor import prepare_instructor

        store = storage.get()
        dataset_version = latest_data_version(context, QC_DATASET)
        cfg = settings.instructor
        with mlflow.start_run(
            context, upstream_data_versions={"qc_dataset": dataset_version}
        ) as run:
            log_params({f"pretrain.{k}": v for k, v in cfg.pretrain.model_dump().items()})
            record = prepare_instructor(
                store,
                store.read_parquet(qc.MANIFEST_KEY),
                model=settings.models.instructor,
                options=cfg.pretrain,
                prompt_template=settings.sft.model.instructor_prompt,
                pad_to_square=settings.sft.model.instructor_pad_to_square,
            )
            metadata = {
                "location": dg.MetadataValue.path(record["location"]),
                "sha256": record["sha256"] or "",
            }
            if record["trained"]:
                metadata |= _register_instructor(
                    context, store, record, run.info.run_id, cfg.register_model
                )
        version_of = record["sha256"] or record["location"]
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(str(version_of)[:16])
        )

    @training_asset(
        settings,
        "sft_checkpoint",
        deps=[QC_DATASET, INSTRUCTOR_MODEL],
        code_version=SFT_CODE_VERSION,
    )
    def sft_checkpoint(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        mlflow: MlflowResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        """The VIVA editing model after context-aware SFT on ``qc_dataset``: training runs as
        ``torchrun`` (``sft.nproc_per_node`` processes) and resumes from its last checkpoint on
        a retry or re-run; the model directory is registered in MLflow as ``viva-sft``."""
        store = storage.get()
        versions = {
            "qc_dataset": latest_data_version(context, QC_DATASET),
            "instructor_model": latest_data_version(context, INSTRUCTOR_MODEL),
        }
        dataset_version = versions["qc_dataset"]
        try:  # a wrong models.* entry fails here, in milliseconds, not hours into the run
            check_training_models(settings)
        except ModelConfigError as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
        manifest = store.read_parquet(qc.MANIFEST_KEY)
        with mlflow.start_run(context, upstream_data_versions=versions) as run:
            config = sft_config(settings, dataset_version, instructor_location(store))
            log_dataset_input(manifest, store.uri(qc.MANIFEST_KEY), dataset_version, "qc_dataset")
            reported, version = launch_training(
                context, pipes_subprocess_client, store, config, sft, run, mlflow.tracking_uri
            )
        summary = store.read_json(summary_key(config.output_prefix))
        context.log.info(
            f"val loss {summary.get('val_loss_first', float('nan')):.4f} -> "
            f"{summary.get('val_loss_last', float('nan')):.4f}; registered "
            f"{sft.register_model} version {version}"
        )
        artifacts = {"model_uri": model_key(config.output_prefix)}
        details = {"registered_model": f"{sft.register_model}/{version}"}
        return _training_result(store, config, {**reported, **details}, artifacts)

    @training_asset(
        settings, "grpo_lora", deps=[SFT_CHECKPOINT, REWARD_MODELS], code_version=GRPO_CODE_VERSION
    )
    def grpo_lora(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        mlflow: MlflowResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        """Edit-GRPO: a LoRA over the SFT model trained on the rewards of ``reward_models``
        (instruction following, source preservation, PickScore); registered in MLflow as
        ``viva-grpo-lora`` with the SFT model it adapts."""
        store = storage.get()
        versions = {
            "sft_checkpoint": latest_data_version(context, SFT_CHECKPOINT),
            "reward_models": latest_data_version(context, REWARD_MODELS),
            "qc_dataset": latest_data_version(context, QC_DATASET),
        }
        config = grpo_config(settings, store, versions["sft_checkpoint"], versions["qc_dataset"])
        sft_model = _latest_metadata(context, SFT_CHECKPOINT).get("registered_model", "")
        links = _grpo_lineage(store, sft_model, config.sft_model)
        with mlflow.start_run(context, upstream_data_versions=versions) as run:
            set_tags(links)
            reported, version = launch_training(
                context, pipes_subprocess_client, store, config, grpo, run, mlflow.tracking_uri
            )
            tag_model_version(grpo.register_model, version, links)
        summary = store.read_json(summary_key(config.output_prefix))
        context.log.info(
            f"held-out reward {summary.get('eval/total_first', float('nan')):.4f} -> "
            f"{summary.get('eval/total_last', float('nan')):.4f}"
        )
        artifacts = {"lora_uri": lora_key(config.output_prefix), "base_model_uri": config.sft_model}
        details = {"registered_model": f"{grpo.register_model}/{version}", "base_model": sft_model}
        curves = reward_curves_key(config.output_prefix)
        if store.exists(curves):  # (a run finished by an older version has none)
            png = markdown_image(store.read_bytes(curves), "Edit-GRPO rewards")
            details["reward_curves"] = dg.MetadataValue.md(png)
        return _training_result(store, config, {**reported, **details}, artifacts)

    return dg.Definitions(
        assets=[instructor_model, sft_checkpoint, grpo_lora],
        resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
    )


def _register_instructor(
    context: dg.AssetExecutionContext, store: Storage, record: dict, run_id: str, register_as: str
) -> dict:
    """Log the pretraining's held-out figures, register the instructor it trained; metadata."""
    trained = record["trained"]
    log_metrics({k: v for k, v in trained.items() if isinstance(v, float)})
    with tempfile.TemporaryDirectory() as tmp:
        version = register_model_dir(store.local_dir(record["location"], tmp), run_id, register_as)
    context.log.info(
        f"held-out position accuracy {trained['val_position_accuracy']:.3f} "
        f"(chance {trained['val_position_chance']:.3f}, untrained "
        f"{trained['val_position_accuracy_untrained']:.3f})"
    )
    figures = {k: v for k, v in trained.items() if isinstance(v, (int, float))}
    return {"registered_model": f"{register_as}/{version}", **figures}


def _grpo_lineage(store: Storage, sft_model: str, sft_model_key: str) -> dict[str, str]:
    """MLflow tags tying a GRPO run and its LoRA to the SFT model and the reward models."""
    record = store.read_json(REWARDS_RECORD)
    return {
        "viva.base_model": sft_model,
        "viva.base_model_uri": store.uri(sft_model_key),
        **{
            f"viva.reward_model.{name}": json.dumps(record[name]["identity"], sort_keys=True)
            for name in ("clip", "pickscore")
        },
    }


def _training_result(
    store: Storage, config: RunConfig, metadata: dict, artifacts: dict[str, str]
) -> dg.MaterializeResult:
    """A training asset's result: what the run reported, links to ``artifacts`` (name -> key),
    the last validation preview, versioned by the run's key."""
    metadata = {
        **metadata,
        **{name: dg.MetadataValue.path(store.uri(key)) for name, key in artifacts.items()},
        "run_key": run_key(config),
    }
    pngs = sorted(k for k in store.list(f"{config.output_prefix}/previews") if k.endswith(".png"))
    if pngs:
        preview = markdown_image(store.read_bytes(pngs[-1]), "validation edits")
        metadata["preview"] = dg.MetadataValue.md("source | target | edit\n\n" + preview)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(run_key(config)))
