"""Jobs, the re-training schedule and the automation that carries new shards downstream."""

import datetime as dt
import warnings

import dagster as dg
import pytest

from viva_pipelines.config.loader import ConfigError
from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.jobs import (
    EVALUATION_ASSETS,
    EVALUATION_JOB,
    SHARD_ASSETS,
    SHARD_JOB,
    TRAINING_ASSETS,
    TRAINING_JOB,
    data_job,
)
from viva_pipelines.defs.schedules import AUTOMATION_SENSOR, RETRAIN_SCHEDULE

PER_SHARD = (dg.AssetKey("tracked_masks"), dg.AssetKey("synthetic_pairs"))


def _job_assets(defs: dg.Definitions, name: str) -> set[str]:
    job = defs.resolve_job_def(name)
    return {key.to_user_string() for key in job.asset_layer.executable_asset_keys}


def test_jobs_select_the_training_chain_the_benchmark_and_the_shards(make_settings):
    defs = build_definitions(make_settings())
    assert _job_assets(defs, TRAINING_JOB) == set(TRAINING_ASSETS)
    assert _job_assets(defs, EVALUATION_JOB) == set(EVALUATION_ASSETS)
    assert _job_assets(defs, SHARD_JOB) == set(SHARD_ASSETS)
    assert data_job.name == SHARD_JOB
    assert defs.resolve_job_def(SHARD_JOB).partitions_def.name == "video_shards"
    assert defs.resolve_job_def(TRAINING_JOB).partitions_def is None
    # The QC gates ride along: a failed blocking check stops the chain before training.
    nodes = set(defs.resolve_job_def(TRAINING_JOB).graph.node_dict)
    assert {
        "qc_dataset_train_split_non_empty",
        "benchmark_suite_no_training_video_in_suite",
    } <= nodes


def test_retrain_schedule_runs_the_training_job_on_the_conf_cron(make_settings):
    settings = make_settings(
        **{
            "schedules.retrain.cron": "30 2 * * 1",
            "schedules.retrain.timezone": "Europe/Paris",
            "schedules.retrain.enabled": True,
        }
    )
    schedule = build_definitions(settings).resolve_schedule_def(RETRAIN_SCHEDULE)
    assert schedule.cron_schedule == "30 2 * * 1"
    assert schedule.execution_timezone == "Europe/Paris"
    assert schedule.job_name == TRAINING_JOB
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    tick = dt.datetime(2026, 6, 1, 2, 30, tzinfo=dt.timezone.utc)
    # The context is closed too: left open, it keeps the instance's state storage current for
    # every later Definitions in the process (after the instance is gone).
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context,
    ):
        requests = schedule.evaluate_tick(context).run_requests
    assert len(requests) == 1


def test_schedule_and_automation_are_stopped_locally_and_running_in_prod(
    make_settings, monkeypatch
):
    local = build_definitions(make_settings())
    assert local.resolve_schedule_def(RETRAIN_SCHEDULE).cron_schedule == "0 3 * * 0"
    assert local.resolve_schedule_def(RETRAIN_SCHEDULE).default_status.value == "STOPPED"
    assert local.resolve_sensor_def(AUTOMATION_SENSOR).default_status.value == "STOPPED"
    monkeypatch.setenv("VIVA_BUCKET", "acme")
    prod = build_definitions(make_settings("prod"))
    assert prod.resolve_schedule_def(RETRAIN_SCHEDULE).default_status.value == "RUNNING"
    sensor = prod.resolve_sensor_def(AUTOMATION_SENSOR)
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status.value == "RUNNING"


def test_a_cron_that_is_not_five_fields_fails_with_its_key(make_settings):
    with pytest.raises(ConfigError, match=r"schedules\.retrain\.cron"):
        make_settings(**{"schedules.retrain.cron": "every sunday"})


def test_per_shard_assets_flow_on_from_raw_videos_without_reruns(make_settings):
    """Eager: a raw_videos materialization by any route requests exactly that shard's
    downstream assets, once; evaluations with nothing new (e.g. after re-enabling the
    sensor, which keeps its cursor) request nothing."""
    defs = build_definitions(make_settings())
    for key in PER_SHARD:
        assert defs.resolve_assets_def(key).automation_conditions_by_key[key] is not None
    with dg.instance_for_test() as instance, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # beta warnings of the evaluation helper
        instance.add_dynamic_partitions("video_shards", ["shard-a", "shard-b", "shard-c"])
        # History before the first evaluation is not replayed.
        instance.report_runless_asset_event(
            dg.AssetMaterialization("raw_videos", partition="shard-a")
        )
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.total_requested == 0

        instance.report_runless_asset_event(
            dg.AssetMaterialization("raw_videos", partition="shard-b")
        )
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert result.total_requested == 2
        for key in PER_SHARD:
            assert set(result.get_requested_partitions(key)) == {"shard-b"}

        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert result.total_requested == 0

        # A shard the sensor's shard job produced whole is already up to date.
        for asset in SHARD_ASSETS:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition="shard-c"))
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert result.total_requested == 0
