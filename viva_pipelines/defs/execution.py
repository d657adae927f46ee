"""How steps run, from ``conf/``'s ``execution`` section: the executor, and the op tags, pool and
retry policy each asset gets (docs/operations.md). Every asset takes its step options from
``step_options`` so a GPU or network step cannot forget its pool or its retries.

``dagster_k8s`` and ``dagster_celery`` (the ``prod`` extra) are imported only when conf selects
them, so the local default needs neither.
"""

from typing import Any

import dagster as dg

from viva_pipelines.config import Settings

#: The concurrency pool of every step that holds a GPU. Its limit is the instance's:
#: ``concurrency.pools.default_limit`` in deploy/dagster*.yaml, or
#: ``dagster instance concurrency set gpu N`` once the cluster has N GPUs to share.
GPU_POOL = "gpu"
#: ``dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG``, spelled out so tags need no import.
CELERY_QUEUE_TAG = "dagster-celery/queue"
K8S_CONFIG_TAG = "dagster-k8s/config"
#: Assets that train or run the video model: on a GPU wherever one exists.
ALWAYS_GPU = frozenset({"sft_checkpoint", "grpo_lora", "benchmark_scores", "edited_videos"})


def requests_gpu(tags: dict[str, Any]) -> bool:
    """True when a step's ``dagster-k8s/config`` tag asks for ``nvidia.com/gpu``."""
    resources = tags.get(K8S_CONFIG_TAG, {}).get("container_config", {}).get("resources", {})
    return any("nvidia.com/gpu" in resources.get(kind, {}) for kind in ("limits", "requests"))


def uses_gpu(settings: Settings, asset: str) -> bool:
    """Training and scoring always do; data steps when conf gives them a GPU (SAM 2, diffusers
    in production), which their ``dagster-k8s/config`` tag says."""
    return asset in ALWAYS_GPU or requests_gpu(settings.execution.asset_tags.get(asset, {}))


def retry_policy(settings: Settings, *, gpu: bool = False) -> dg.RetryPolicy:
    """The one retry policy of network and GPU steps. Exponential backoff with jitter, so
    shards that failed together on an S3 or endpoint hiccup do not retry in lockstep."""
    cfg = settings.execution.retry
    return dg.RetryPolicy(
        max_retries=cfg.max_retries,
        delay=cfg.gpu_delay_s if gpu else cfg.delay_s,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def op_tags(settings: Settings, asset: str) -> dict[str, Any]:
    """``execution.asset_tags[asset]`` plus, under Celery, the queue the step is routed to."""
    tags = dict(settings.execution.asset_tags.get(asset, {}))
    if settings.execution.executor == "celery":
        celery = settings.execution.celery
        gpu_queue = celery.gpu_queue if uses_gpu(settings, asset) else celery.default_queue
        tags.setdefault(CELERY_QUEUE_TAG, celery.queues.get(asset, gpu_queue))
    return tags


def step_options(settings: Settings, asset: str, *, retry: bool = True) -> dict[str, Any]:
    """``dg.asset`` keyword arguments for ``asset``: op tags, pool ``gpu`` when it uses a GPU,
    and the shared retry policy (``retry=False`` for steps with nothing transient to retry)."""
    gpu = uses_gpu(settings, asset)
    return {
        "op_tags": op_tags(settings, asset),
        "pool": GPU_POOL if gpu else None,
        "retry_policy": retry_policy(settings, gpu=gpu) if retry else None,
    }


def executor_config(settings: Settings) -> dict[str, Any]:
    """The run-independent config of the selected executor (empty for in-process)."""
    execution = settings.execution
    if execution.executor == "multiprocess":
        return {"max_concurrent": execution.max_concurrent}
    if execution.executor == "k8s":
        k8s = execution.k8s
        config: dict[str, Any] = {
            "job_namespace": k8s.job_namespace,
            "image_pull_policy": k8s.image_pull_policy,
            "image_pull_secrets": [{"name": name} for name in k8s.image_pull_secrets],
            "env_config_maps": list(k8s.env_config_maps),
            "env_secrets": list(k8s.env_secrets),
            "labels": dict(k8s.labels),
            "load_incluster_config": k8s.load_incluster_config,
        }
        optional = {
            "job_image": k8s.job_image,
            "service_account_name": k8s.service_account_name,
            "max_concurrent": k8s.max_concurrent,
        }
        return config | {key: value for key, value in optional.items() if value is not None}
    if execution.executor == "celery":
        celery = execution.celery
        return {
            # StringSource: a URL with a password is read from the environment at run time,
            # never stored in the job snapshot.
            "broker": {"env": celery.broker_env} if celery.broker_env else celery.broker,
            "backend": {"env": celery.backend_env} if celery.backend_env else celery.backend,
            "config_source": {"task_default_queue": celery.default_queue},
        }
    return {}


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The executor named by ``execution.executor``, configured from conf."""
    name = settings.execution.executor
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        base = dg.multiprocess_executor
    elif name == "k8s":
        from dagster_k8s import k8s_job_executor

        base = k8s_job_executor
    else:
        from dagster_celery import celery_executor

        base = celery_executor
    return base.configured(executor_config(settings), name=name)
