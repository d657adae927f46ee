"""Raw-video ingestion: find source files, assign them to shards, normalise them into storage."""
