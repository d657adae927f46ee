"""Evaluation of edited videos (VIE-Bench style), plain library code with no Dagster
dependency: the benchmark suite format in :mod:`viva_pipelines.evaluation.suite` and the
automatic metrics in :mod:`viva_pipelines.evaluation.metrics`."""
