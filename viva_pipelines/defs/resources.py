"""Resources built from ``conf/``: storage roots, S3 client, MLflow tracking."""

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import dagster as dg
from dagster_aws.s3 import S3Resource

from viva_pipelines.config import Settings
from viva_pipelines.config.schema import VlmSettings
from viva_pipelines.storage import Storage
from viva_pipelines.tracking import (
    TrackingServerUnreachable,
    lineage_tags,
    tracked_run,
    use_s3_endpoint,
)
from viva_pipelines.vlm.base import VlmBackend
from viva_pipelines.vlm.client import ChatCompletionsClient, RetryPolicy

if TYPE_CHECKING:
    from mlflow.entities import Run


class StorageResource(dg.ConfigurableResource):
    """A storage root (local folder or ``s3://bucket/prefix``) with atomic, confined writes."""

    root: str
    endpoint_url: str | None = None
    region_name: str | None = None

    def get(self) -> Storage:
        return Storage(self.root, endpoint_url=self.endpoint_url, region_name=self.region_name)


class MlflowResource(dg.ConfigurableResource):
    """Opens MLflow runs tagged with the Dagster materialization that owns them (docs/architecture.md)."""

    tracking_uri: str
    experiment: str = "viva-pipelines"
    artifact_location: str | None = None
    s3_endpoint_url: str | None = None  # storage.s3.endpoint_url, for s3:// artifact locations

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Before any use: a step that only downloads a registered model (edited_videos with
        # inference.model models:/…) reads S3 artifacts through MLflow's own client too.
        use_s3_endpoint(self.s3_endpoint_url)

    @contextmanager
    def start_run(
        self,
        context: dg.AssetExecutionContext,
        *,
        run_name: str | None = None,
        upstream_data_versions: Mapping[str, str] | None = None,
    ) -> Iterator["Run"]:
        """An active MLflow run for this materialization; its id and URL go into the asset's
        metadata so the Dagster UI links to it."""
        asset_key = context.asset_key
        partition = context.partition_key if context.has_partition_key else None
        code_version = context.assets_def.code_versions_by_key.get(asset_key)
        tags = lineage_tags(
            dagster_run_id=context.run_id,
            asset_key=asset_key.to_user_string(),
            partition=partition,
            code_version=code_version,
            upstream_data_versions=upstream_data_versions,
        )
        name = run_name or "-".join(filter(None, [asset_key.to_user_string(), partition]))
        opened = tracked_run(
            self.tracking_uri,
            self.experiment,
            artifact_location=self.artifact_location,
            run_name=name,
            tags=tags,
        )
        with ExitStack() as stack:
            try:  # tracked_run probes the server before opening the run
                run = stack.enter_context(opened)
            except TrackingServerUnreachable as exc:
                # The environment's fault, not the code's: its one line (the step's retry
                # policy still applies: the server may be back by then), not a stack trace.
                raise dg.Failure(str(exc)) from None
            context.add_output_metadata(
                {
                    "mlflow_run_id": run.info.run_id,
                    "mlflow_experiment_id": run.info.experiment_id,
                    "mlflow_tracking_uri": self.tracking_uri,
                }
            )
            yield run


def vlm_backend(vlm: VlmSettings, storage: Storage) -> VlmBackend:
    """The VLM that ``vlm`` configures (the QC reviewer's or the benchmark judge's), its
    answers cached in ``storage``."""
    if vlm.backend == "local":
        from viva_pipelines.vlm.local import LocalLlavaBackend

        return LocalLlavaBackend(
            vlm.local_model, max_new_tokens=vlm.max_new_tokens, device=vlm.device, cache=storage
        )
    return ChatCompletionsClient(
        vlm.base_url,
        vlm.model,
        api_key_env=vlm.api_key_env,
        timeout_s=vlm.timeout_s,
        max_tokens=vlm.max_new_tokens,
        retry=RetryPolicy(vlm.max_attempts, vlm.backoff_s, vlm.max_backoff_s),
        rate_limit_per_s=vlm.rate_limit_per_s,
        cache=storage,
    )


def _s3_kwargs(settings: Settings) -> dict[str, str | None]:
    return {
        "endpoint_url": settings.storage.s3.endpoint_url,
        "region_name": settings.storage.s3.region_name,
    }


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Every resource of the code location, configured from ``settings``."""
    s3 = _s3_kwargs(settings)
    return {
        "storage": StorageResource(root=settings.storage.root, **s3),
        "video_source": StorageResource(root=settings.sources.raw_videos.uri, **s3),
        "s3": S3Resource(**{k: v for k, v in s3.items() if v is not None}),
        "mlflow": MlflowResource(
            tracking_uri=settings.mlflow_tracking_uri,
            experiment=settings.mlflow.experiment,
            artifact_location=settings.mlflow_artifact_location,
            s3_endpoint_url=settings.storage.s3.endpoint_url,
        ),
    }
