"""The jobs operators launch or schedule: per-shard data, re-training and evaluation."""

import dagster as dg

from viva_pipelines.defs.partitions import video_shards

#: Everything computed per shard, in order; what the sensor and ``viva ingest`` run.
SHARD_JOB = "process_shards"
SHARD_ASSETS = ("raw_videos", "tracked_masks", "synthetic_pairs")
#: From the dataset over all shards to the scores: what the re-training schedule runs.
TRAINING_JOB = "training_job"
TRAINING_ASSETS = (
    "qc_dataset", "instructor_model", "reward_models", "sft_checkpoint", "grpo_lora",
    "benchmark_suite", "benchmark_scores",
)  # fmt: skip
#: Re-score the current models, e.g. after the benchmark suite changed.
EVALUATION_JOB = "evaluation_job"
EVALUATION_ASSETS = ("benchmark_suite", "benchmark_scores")

shard_job = dg.define_asset_job(
    SHARD_JOB, selection=dg.AssetSelection.assets(*SHARD_ASSETS), partitions_def=video_shards
)
#: The data job is the shard job (one run per shard); the name stays for the CLI and sensor.
data_job = shard_job
training_job = dg.define_asset_job(
    TRAINING_JOB,
    selection=dg.AssetSelection.assets(*TRAINING_ASSETS),
    description=(
        "Re-train on the current dataset: QC, instructor, rewards, SFT, Edit-GRPO, benchmark."
    ),
)
evaluation_job = dg.define_asset_job(
    EVALUATION_JOB,
    selection=dg.AssetSelection.assets(*EVALUATION_ASSETS),
    description="Score the registered models on the benchmark suite.",
)
