"""``benchmark_suite`` and ``benchmark_scores``: the VIE-Bench-style evaluation of the models."""

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from viva_pipelines.config import Settings
from viva_pipelines.defs.execution import step_options
from viva_pipelines.defs.ingest import ingest_options
from viva_pipelines.defs.lineage import pending_lineage
from viva_pipelines.defs.resources import MlflowResource, StorageResource, vlm_backend
from viva_pipelines.defs.training import (
    QC_DATASET,
    REWARD_MODELS,
    SFT_CHECKPOINT,
    latest_data_version,
)
from viva_pipelines.evaluation import benchmark as bench
from viva_pipelines.evaluation.suite import (
    MANIFEST,
    SuiteError,
    leaked_instances,
    load_suite,
    suite_fingerprint,
    suite_frame,
    training_video_hashes,
)
from viva_pipelines.manifests import markdown_table, reason_counts
from viva_pipelines.previews import markdown_image
from viva_pipelines.qc import dataset as qc
from viva_pipelines.rewards.models import RECORD_KEY as REWARDS_RECORD
from viva_pipelines.rewards.models import load_scorers
from viva_pipelines.storage import Storage, file_location
from viva_pipelines.train.runs import grpo_run, lora_key, model_key, sft_run
from viva_pipelines.vlm.base import VlmBackend

SUITE_CODE_VERSION = "benchmark_suite-1"
SCORES_CODE_VERSION = "benchmark_scores-1"
SUITE_KEY = "benchmark_suite/instances.parquet"
SCORES_PREFIX = "benchmark_scores"
BENCHMARK_SUITE = dg.AssetKey("benchmark_suite")
GRPO_LORA = dg.AssetKey("grpo_lora")


def suite_storage(settings: Settings) -> Storage:
    """Where the suite's media live (``benchmark.root``)."""
    s3 = settings.storage.s3
    return Storage(
        settings.benchmark.root, endpoint_url=s3.endpoint_url, region_name=s3.region_name
    )


def load_configured_suite(settings: Settings) -> tuple[Storage, list]:
    """The suite ``benchmark`` configures, validated (files included)."""
    media = suite_storage(settings)
    manifest = settings.benchmark.manifest
    if manifest is None:
        return media, load_suite(media, MANIFEST)
    source, key = file_location(manifest, endpoint_url=settings.storage.s3.endpoint_url)
    return media, load_suite(media, key, manifest_storage=source)


def build_benchmark_defs(settings: Settings) -> dg.Definitions:
    cfg = settings.benchmark

    @dg.asset(
        code_version=SUITE_CODE_VERSION,
        group_name="benchmark",
        kinds={"parquet"},
        **step_options(settings, "benchmark_suite"),  # retried: the suite may be on S3
    )
    def benchmark_suite(
        context: dg.AssetExecutionContext, storage: StorageResource
    ) -> dg.MaterializeResult:
        """The benchmark instances (``benchmark.manifest`` over ``benchmark.root``), validated
        line by line with every referenced file present; the data version hashes the rows
        and the media, so a changed file re-runs the scores."""
        try:
            media, instances = load_configured_suite(settings)
        except SuiteError as exc:
            raise dg.Failure(f"benchmark suite: {exc}", allow_retries=False) from None
        frame = suite_frame(instances)
        store = storage.get()
        store.write_parquet(SUITE_KEY, frame)
        counts = frame["category"].value_counts(sort=False).rename("instances").to_frame()
        context.log.info(f"{len(frame)} instances from {media.root_uri}")
        return dg.MaterializeResult(
            metadata={
                "instances": len(frame),
                "per_category": dg.MetadataValue.md(markdown_table(counts)),
                "root": dg.MetadataValue.path(media.root_uri),
                "manifest": cfg.manifest or media.uri(MANIFEST),
                "with_target": int(frame["target_video"].notna().sum()),
                "with_mask": int(frame["edit_mask"].notna().sum()),
            },
            data_version=dg.DataVersion(suite_fingerprint(media, instances)),
        )

    @dg.asset_check(asset=benchmark_suite, blocking=True)
    def no_training_video_in_suite(storage: StorageResource) -> dg.AssetCheckResult:
        """No suite source video is (byte for byte) a video of ``qc_dataset``'s training
        split: a model must not be scored on what it was trained on."""
        store = storage.get()
        if not store.exists(qc.MANIFEST_KEY):
            return dg.AssetCheckResult(
                passed=True, metadata={"result": "no qc_dataset yet: nothing to leak"}
            )
        media, instances = load_configured_suite(settings)
        hashes = training_video_hashes(store, store.read_parquet(qc.MANIFEST_KEY))
        leaked = leaked_instances(media, instances, hashes)
        text = (
            f"{len(leaked)} of {len(instances)} suite videos are training videos: "
            + ", ".join(leaked[:20])
            if leaked
            else f"none of {len(instances)} suite videos is among {len(hashes)} training videos"
        )
        return dg.AssetCheckResult(passed=not leaked, metadata={"result": text})

    @dg.asset(
        deps=[BENCHMARK_SUITE, SFT_CHECKPOINT, GRPO_LORA, REWARD_MODELS],
        code_version=SCORES_CODE_VERSION,
        group_name="benchmark",
        kinds={"pytorch", "mlflow"},
        **step_options(settings, "benchmark_scores"),
    )
    def benchmark_scores(
        context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        """Every suite instance edited by each model of ``benchmark.models`` (the SFT model,
        its Edit-GRPO LoRA when one exists, and the identity baseline), scored with CLIP-T,
        CLIP-F, CLIP instruction following, background and ground-truth PSNR/SSIM and, when
        ``benchmark.judge`` is on, the VLM judge; tabulated per category and model."""
        from mlflow import MlflowClient

        store = storage.get()
        versions = _evaluated_versions(context, cfg.models)
        media, instances = load_configured_suite(settings)
        judge = vlm_backend(cfg.judge, store) if cfg.judge.enabled else None
        result = _evaluate(store, settings, versions, media, instances, judge, context.log.warning)
        with mlflow.start_run(context, upstream_data_versions=versions) as mlflow_run:
            prefix = f"{SCORES_PREFIX}/{mlflow_run.info.run_id}"
            keys = bench.log_benchmark(store, prefix, result, versions)
            tracking = MlflowClient(mlflow.tracking_uri)
            lineage = pending_lineage(
                context.instance, SCORES_PREFIX, list(versions), store, tracking
            )
            store.write_json(f"{prefix}/lineage.json", lineage.to_dict())
        for problem in result.problems:
            context.log.error(f"sanity: {problem}")
        context.log.info("\n" + result.report)
        metadata = _scores_metadata(store, keys, result, len(instances), lineage.render())
        return dg.MaterializeResult(metadata=metadata)

    return dg.Definitions(
        assets=[benchmark_suite, benchmark_scores], asset_checks=[no_training_video_in_suite]
    )


def _evaluate(
    store: Storage,
    settings: Settings,
    versions: dict[str, str],
    media: Storage,
    instances: list,
    judge: VlmBackend | None,
    log: Callable[[str], None],
) -> bench.BenchmarkResult:
    """The suite edited by each model of the trained runs ``versions`` name, and scored."""
    cfg = settings.benchmark
    with tempfile.TemporaryDirectory(prefix="viva-bench-") as tmp:
        sft_dir = store.local_dir(model_key(sft_run(versions["sft_checkpoint"])), Path(tmp, "sft"))
        lora_dir = "grpo_lora" in versions and store.local_dir(
            lora_key(grpo_run(versions["grpo_lora"])), Path(tmp, "lora")
        )
        clip, _ = load_scorers(store, store.read_json(REWARDS_RECORD), Path(tmp, "rewards"))
        spec = ingest_options(settings).spec
        return bench.evaluate_models(
            media,
            instances,
            sft_dir,
            lora_dir or None,
            cfg,
            clip,
            spec,
            judge=judge,
            judge_cache=store if judge else None,
            log=log,
        )


def _evaluated_versions(context: dg.AssetExecutionContext, models: list[str]) -> dict[str, str]:
    """The data versions of what benchmark_scores evaluates: the suite, the SFT model, the
    reward models, the dataset and, when one exists and ``grpo`` is asked for, the LoRA."""
    versions = {
        "benchmark_suite": latest_data_version(context, BENCHMARK_SUITE),
        "sft_checkpoint": latest_data_version(context, SFT_CHECKPOINT),
        "reward_models": latest_data_version(context, REWARD_MODELS),
        "qc_dataset": latest_data_version(context, QC_DATASET),
    }
    if "grpo" in models:
        try:
            versions["grpo_lora"] = latest_data_version(context, GRPO_LORA)
        except dg.Failure:
            context.log.warning("grpo_lora not materialized yet: benchmarking without it")
    return versions


def _scores_metadata(
    store: Storage,
    keys: dict[str, str],
    result: bench.BenchmarkResult,
    instances: int,
    lineage: str,
) -> dict[str, Any]:
    """The report, where the files are, failures by reason, the sanity verdict, the lineage
    and the side-by-side previews."""
    errors = result.run.rows["error"]
    metadata: dict[str, Any] = {
        "report": dg.MetadataValue.md(result.report),
        "scores": dg.MetadataValue.path(store.uri(keys["scores"])),
        "table": dg.MetadataValue.path(store.uri(keys["table"])),
        "instances": instances,
        "models": ", ".join(result.models),
        "failed_edits": int(errors.notna().sum()),
        "failures_by_reason": dg.MetadataValue.json(reason_counts(errors)),
        "sanity": "; ".join(result.problems) or "ok",
        "lineage": dg.MetadataValue.md(f"```\n{lineage}\n```"),
    }
    if "preview" in keys:
        columns = " | ".join(["source", "target", *result.models])
        metadata["preview"] = dg.MetadataValue.md(
            f"{columns}\n\n" + markdown_image(store.read_bytes(keys["preview"]), "previews")
        )
    return metadata
