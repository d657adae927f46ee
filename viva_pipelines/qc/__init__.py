"""Quality control of edit pairs: cheap rule metrics, an optional VLM review, the dataset."""
