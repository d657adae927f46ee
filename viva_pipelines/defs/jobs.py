import dagster as dg

from viva_pipelines.defs.partitions import video_shards

#: Everything computed per shard, in order; what the sensor and ``viva ingest`` run.
SHARD_JOB = "process_shards"
SHARD_ASSETS = ("raw_videos", "tracked_masks", "synthetic_pairs")

shard_job = dg.define_asset_job(
    SHARD_JOB, selection=dg.AssetSelection.assets(*SHARD_ASSETS), partitions_def=video_shards
)
