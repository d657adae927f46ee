"""Time- and event-driven launches from ``conf/``: the re-training schedule and the
automation condition sensor that carries new shards on to their per-shard assets."""

import dagster as dg

from viva_pipelines.config import Settings
from viva_pipelines.defs.jobs import training_job

RETRAIN_SCHEDULE = "retrain_schedule"
AUTOMATION_SENSOR = "default_automation_condition_sensor"


def build_schedule_defs(settings: Settings) -> dg.Definitions:
    """``schedules.retrain`` -> ``training_job``; ``automation`` -> the sensor that evaluates
    every asset's automation condition. Both ship stopped locally (nothing starts work behind
    the user's back in ``dagster dev``) and running in production, as conf says."""
    retrain = settings.schedules.retrain
    schedule = dg.ScheduleDefinition(
        name=RETRAIN_SCHEDULE,
        job=training_job,
        cron_schedule=retrain.cron,
        execution_timezone=retrain.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING
        if retrain.enabled
        else dg.DefaultScheduleStatus.STOPPED,
        description="Periodic re-training on every shard ingested so far (schedules.retrain).",
    )
    automation = dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(),
        minimum_interval_seconds=settings.automation.interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING
        if settings.automation.enabled
        else dg.DefaultSensorStatus.STOPPED,
        description="New raw_videos shards flow on to tracked_masks and synthetic_pairs.",
    )
    return dg.Definitions(schedules=[schedule], sensors=[automation])
