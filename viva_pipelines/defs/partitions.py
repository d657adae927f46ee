import dagster as dg

#: One partition per shard of up to ``ingest.shard_size`` source videos (docs/architecture.md: per-video
#: partitions do not scale). Registered by the raw-video sensor and by ``viva ingest``.
video_shards = dg.DynamicPartitionsDefinition(name="video_shards")
