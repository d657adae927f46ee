"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

import dagster as dg

from viva_pipelines.config import Settings
from viva_pipelines.defs.benchmark import build_benchmark_defs
from viva_pipelines.defs.data import build_data_defs
from viva_pipelines.defs.execution import build_executor
from viva_pipelines.defs.inference import build_inference_defs
from viva_pipelines.defs.ingest import build_ingest_defs
from viva_pipelines.defs.jobs import evaluation_job, shard_job, training_job
from viva_pipelines.defs.resources import build_resources
from viva_pipelines.defs.rewards import build_reward_defs
from viva_pipelines.defs.schedules import build_schedule_defs
from viva_pipelines.defs.training import build_training_defs
from viva_pipelines.settings import get_settings


def build_definitions(settings: Settings) -> dg.Definitions:
    """All assets, sensors, schedules, jobs, resources and the executor, from ``settings``."""
    return dg.Definitions.merge(
        build_ingest_defs(settings),
        build_data_defs(settings),
        build_training_defs(settings),
        build_reward_defs(settings),
        build_benchmark_defs(settings),
        build_inference_defs(settings),
        build_schedule_defs(settings),
        dg.Definitions(
            jobs=[shard_job, training_job, evaluation_job],
            resources=build_resources(settings),
            executor=build_executor(settings),
        ),
    )


defs = build_definitions(get_settings())
