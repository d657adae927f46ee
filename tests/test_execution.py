"""Execution from conf: the executor, GPU step tags, the gpu pool, retries, instance templates."""

import json
import os
import subprocess
import sys
import uuid

import dagster as dg
import pytest
import yaml

from tests.conftest import REPO
from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.execution import CELERY_QUEUE_TAG, GPU_POOL, K8S_CONFIG_TAG
from viva_pipelines.defs.jobs import EVALUATION_JOB, SHARD_JOB, TRAINING_JOB

GPU_ASSETS = (
    "tracked_masks", "synthetic_pairs", "sft_checkpoint", "grpo_lora", "benchmark_scores",
    "edited_videos",
)  # fmt: skip
NETWORK_ASSETS = ("raw_videos", "qc_dataset", "reward_models", "benchmark_suite")


@pytest.fixture
def prod(make_settings, monkeypatch):
    """``make_settings("prod", ...)`` with the bucket the prod conf interpolates."""
    monkeypatch.setenv("VIVA_BUCKET", "acme")
    return lambda **overrides: make_settings("prod", **overrides)


def _tag(op: dg.OpDefinition, key: str):
    value = op.tags[key]
    return json.loads(value) if isinstance(value, str) else value


def test_prod_gpu_assets_request_a_gpu_node_join_the_gpu_pool_and_retry(prod):
    defs = build_definitions(prod())
    for name in GPU_ASSETS:
        op = defs.resolve_assets_def(name).op
        k8s = _tag(op, K8S_CONFIG_TAG)
        assert int(k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
        pod = k8s["pod_spec_config"]
        assert pod["node_selector"]["nvidia.com/gpu.product"].startswith("NVIDIA-"), name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ], name
        assert op.pool == GPU_POOL, name
        assert op.retry_policy.max_retries == 2, name
        assert op.retry_policy.delay == 30, name  # the GPU backoff
    sft = _tag(defs.resolve_assets_def("sft_checkpoint").op, K8S_CONFIG_TAG)
    assert sft["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_network_steps_retry_with_the_shared_policy_and_hold_no_gpu_slot(prod):
    defs = build_definitions(prod())
    for name in NETWORK_ASSETS:
        op = defs.resolve_assets_def(name).op
        assert op.pool is None, name
        assert K8S_CONFIG_TAG not in op.tags, name
        policy = op.retry_policy
        assert (policy.max_retries, policy.delay) == (2, 10), name
        assert policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter == dg.Jitter.PLUS_MINUS


def test_retry_values_come_from_conf(make_settings):
    settings = make_settings(**{"execution.retry.max_retries": 5, "execution.retry.delay_s": 1})
    defs = build_definitions(settings)
    for name in ("raw_videos", "tracked_masks", "qc_dataset"):
        assert defs.resolve_assets_def(name).op.retry_policy.max_retries == 5
        assert defs.resolve_assets_def(name).op.retry_policy.delay == 1


def test_local_data_steps_are_cpu_only_and_training_keeps_the_gpu_pool(make_settings):
    defs = build_definitions(make_settings())
    for name in ("tracked_masks", "synthetic_pairs"):
        assert defs.resolve_assets_def(name).op.pool is None
    for name in ("sft_checkpoint", "grpo_lora", "benchmark_scores", "edited_videos"):
        assert defs.resolve_assets_def(name).op.pool == GPU_POOL


def test_local_default_is_the_multiprocess_executor(make_settings):
    defs = build_definitions(make_settings())
    job = defs.resolve_job_def(TRAINING_JOB)
    assert job.executor_def.name == "multiprocess"
    resolved = dg.validate_run_config(job, {})["execution"]
    assert resolved["multiprocess"]["max_concurrent"] == 2


def test_prod_selects_the_k8s_executor_configured_from_conf(prod):
    defs = build_definitions(prod(**{"execution.k8s.job_image": "ghcr.io/acme/viva:1.2"}))
    for name in (TRAINING_JOB, EVALUATION_JOB, SHARD_JOB):
        assert defs.resolve_job_def(name).executor_def.name == "k8s"
    # The run config Dagster would launch with: the executor's schema accepted conf's values.
    k8s = dg.validate_run_config(defs.resolve_job_def(TRAINING_JOB), {})["execution"]["k8s"]
    assert k8s["job_namespace"] == "viva-pipelines"
    assert k8s["job_image"] == "ghcr.io/acme/viva:1.2"
    assert k8s["image_pull_policy"] == "IfNotPresent"
    assert k8s["service_account_name"] == "viva-pipelines"
    assert k8s["env_secrets"] == ["viva-pipelines-env"]


def test_celery_executor_routes_gpu_steps_to_the_gpu_queue(prod, monkeypatch):
    settings = prod(
        **{"execution.executor": "celery", "execution.celery.queues": {"qc_dataset": "vlm"}}
    )
    defs = build_definitions(settings)
    job = defs.resolve_job_def(TRAINING_JOB)
    assert job.executor_def.name == "celery"
    for name in GPU_ASSETS:
        assert defs.resolve_assets_def(name).op.tags[CELERY_QUEUE_TAG] == "gpu", name
    assert defs.resolve_assets_def("raw_videos").op.tags[CELERY_QUEUE_TAG] == "dagster"
    assert defs.resolve_assets_def("qc_dataset").op.tags[CELERY_QUEUE_TAG] == "vlm"
    # The broker URL (with its password) is read from the environment when a run starts.
    with pytest.raises(dg.DagsterInvalidConfigError, match="VIVA_CELERY_BROKER_URL"):
        dg.validate_run_config(job, {})
    monkeypatch.setenv("VIVA_CELERY_BROKER_URL", "pyamqp://viva:secret@rabbitmq:5672//")
    monkeypatch.setenv("VIVA_CELERY_BACKEND_URL", "redis://redis:6379/1")
    celery = dg.validate_run_config(job, {})["execution"]["celery"]
    assert celery["broker"] == "pyamqp://viva:secret@rabbitmq:5672//"
    assert celery["backend"] == "redis://redis:6379/1"
    assert celery["config_source"]["task_default_queue"] == "dagster"


def test_queue_tags_only_under_celery(prod):
    defs = build_definitions(prod())
    assert CELERY_QUEUE_TAG not in defs.resolve_assets_def("sft_checkpoint").op.tags


def test_local_definitions_import_neither_k8s_nor_celery(project):
    code = (
        "import sys, viva_pipelines.definitions as d; "
        "assert d.defs.resolve_job_def('training_job').executor_def.name == 'multiprocess'; "
        "print(sorted(m for m in ('dagster_k8s', 'dagster_celery') if m in sys.modules))"
    )
    env = {**os.environ, "VIVA_CONF_DIR": str(project / "conf"), "VIVA_ENV": "base"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _instance_yaml(name: str) -> dict:
    return yaml.safe_load((REPO / "deploy" / name).read_text())


def _assert_pool_and_monitoring(instance: dg.DagsterInstance) -> None:
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    assert info.limit == 1 and info.using_default_limit
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_runtime_seconds == 24 * 3600
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    # One GPU step at a time across runs; a run's slots, once freed (what run monitoring does
    # for a cancelled or crashed run), go to the next waiting step.
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(GPU_POOL)
    first, second = f"run-{uuid.uuid4().hex[:8]}", f"run-{uuid.uuid4().hex[:8]}"
    assert storage.claim_concurrency_slot(GPU_POOL, first, "sft_checkpoint").is_claimed
    assert not storage.claim_concurrency_slot(GPU_POOL, second, "grpo_lora").is_claimed
    storage.free_concurrency_slots_for_run(first)
    assert storage.claim_concurrency_slot(GPU_POOL, second, "grpo_lora").is_claimed


def test_local_instance_template_limits_the_gpu_pool_and_monitors_runs():
    config = _instance_yaml("dagster.yaml")
    assert config["concurrency"]["pools"]["default_limit"] == 1
    with dg.instance_for_test(overrides=config) as instance:
        _assert_pool_and_monitoring(instance)
        assert instance.run_monitoring_max_resume_run_attempts == 0


def _postgres_or_skip():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        return psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {exc}")


def test_prod_instance_template_uses_postgres_from_env_with_the_same_limits(monkeypatch):
    from dagster_postgres import PostgresRunStorage

    conn = _postgres_or_skip()
    conn.autocommit = True
    db = f"viva_test_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {db}")
    try:
        for key, value in {
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "DB": db,
            "USERNAME": "postgres",
            "PASSWORD": "",
        }.items():
            monkeypatch.setenv(f"DAGSTER_PG_{key}", value)
        config = _instance_yaml("dagster.prod.yaml")
        assert config["storage"]["postgres"]["postgres_db"]["password"] == {
            "env": "DAGSTER_PG_PASSWORD"
        }
        with dg.instance_for_test(overrides=config) as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            _assert_pool_and_monitoring(instance)
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.close()
