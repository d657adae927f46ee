"""Lineage audit: from a benchmark run or a model back to the raw files that made it.

Dagster records, on every materialization, which upstream materialization it read
(``dagster/input_event_pointer/<asset>``: the event's storage id). Following those pointers
from one materialization walks the exact chain that produced it: benchmark_scores ->
sft_checkpoint / grpo_lora / reward_models / benchmark_suite -> qc_dataset -> every shard's
synthetic_pairs -> tracked_masks and raw_videos -> the raw video files with the checksums
recorded at ingest. Partitioned upstreams are pointed to by one event only, so each shard is
resolved to its latest materialization at or before that event (the state the consumer saw).
MLflow supplies the way in (a registered model version or a run id names its Dagster run) and
the registered versions shown along the way.
"""

import re
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from viva_pipelines.ingest.raw_videos import manifest_key as raw_manifest_key
from viva_pipelines.storage import Storage

POINTER_TAG = "dagster/input_event_pointer/"
VERSION_TAG = "dagster/data_version"
PAGE = 5_000
#: Assets whose upstream is partitioned by shard although they are not.
SHARDED_UPSTREAM = {"qc_dataset": "synthetic_pairs"}
#: Metadata of an asset that names exactly which materializations it read (asset → event
#: storage id), replacing Dagster's pointers: ``edited_videos`` edits with a configured model
#: version, not necessarily the latest one its dependency points to.
UPSTREAM_EVENTS = "upstream_events"
#: Metadata worth showing in the audit, per asset.
SHOWN_METADATA = (
    "registered_model", "base_model", "model_uri", "lora_uri", "clip", "pickscore", "root",
    "instances", "models", "sanity", "manifest", "dataset_version", "mlflow_run_id",
)  # fmt: skip


class LineageError(ValueError):
    """A lineage target that cannot be resolved; the message says why."""


@dataclass
class LineageNode:
    """One materialization in the chain, with what it read."""

    asset: str
    data_version: str | None
    partition: str | None = None
    run_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    upstream: list["LineageNode"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.asset + (f"[{self.partition}]" if self.partition else "")

    def to_dict(self, seen: set[int] | None = None) -> dict[str, Any]:
        """JSON-ready; a materialization reached twice (two consumers read it) is given in
        full the first time and as ``{"asset", "partition", "data_version", "see_above"}``
        after that."""
        seen = set() if seen is None else seen
        head = {"asset": self.asset, "partition": self.partition, "data_version": self.data_version}
        if id(self) in seen:
            return {**head, "see_above": True}
        seen.add(id(self))
        return {
            **head,
            "dagster_run_id": self.run_id,
            **({"details": self.details} if self.details else {}),
            "upstream": [node.to_dict(seen) for node in self.upstream],
        }

    def render(self, indent: str = "", seen: set[int] | None = None) -> str:
        """A readable tree, one materialization per line, details indented below it; one
        reached again is named with ``(see above)``."""
        seen = set() if seen is None else seen
        line = f"{indent}{self.name}  version {self.data_version}"
        if id(self) in seen:
            return line + "  (see above)"
        seen.add(id(self))
        lines = [line]
        for key, value in self.details.items():
            if key == "videos":
                for video in value:
                    line = f"{indent}    {video['uri']}  sha256 {video['sha256']}"
                    if "source" in video:  # an edited video: what it was made from
                        line += f"  from {video['source']} (sha256 {video['source_sha256']})"
                    lines.append(line)
            else:
                lines.append(f"{indent}    {key}: {value}")
        lines += [node.render(indent + "  ", seen) for node in self.upstream]
        return "\n".join(lines)


def _metadata(record: dg.EventLogRecord) -> dict[str, Any]:
    materialization = record.asset_materialization
    values = {name: getattr(v, "value", v) for name, v in materialization.metadata.items()}
    return {name: values[name] for name in SHOWN_METADATA if name in values}


def _record(instance: dg.DagsterInstance, asset: str, storage_id: int) -> dg.EventLogRecord:
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), storage_ids=[storage_id]), limit=1
    ).records
    if not found:
        raise LineageError(f"{asset}: materialization event {storage_id} is not in the event log")
    return found[0]


def _shards_at(instance: dg.DagsterInstance, asset: str, before: int) -> list[dg.EventLogRecord]:
    """The latest materialization of every partition of ``asset`` at or before event
    ``before``."""
    selection = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), before_storage_id=before + 1)
    latest: dict[str, dg.EventLogRecord] = {}
    cursor = None
    while True:  # newest first, a page at a time (the event log caps one fetch)
        page = instance.fetch_materializations(selection, limit=PAGE, cursor=cursor)
        for record in page.records:
            latest.setdefault(record.asset_materialization.partition, record)
        if not page.has_more:
            return [latest[key] for key in sorted(latest)]
        cursor = page.cursor


def _raw_videos(storage: Storage, node: LineageNode) -> None:
    """The shard's raw video URIs and checksums, from its ingest manifest, when the stored
    manifest is still the version this chain used (else say that it changed since)."""
    from viva_pipelines.ingest.raw_videos import manifest_data_version

    key = raw_manifest_key(node.partition)
    if not storage.exists(key):
        node.details["videos_note"] = "manifest no longer in storage"
        return
    manifest = storage.read_parquet(key)
    if manifest_data_version(manifest) != node.data_version:
        node.details["videos_note"] = (
            "the shard was re-ingested since; its current manifest is a newer version"
        )
        return
    node.details["videos"] = [
        {"uri": row.source_uri or row.source_key, "sha256": row.source_sha256}
        for row in manifest.itertuples()
    ]


def build_lineage(
    instance: dg.DagsterInstance,
    record: dg.EventLogRecord,
    storage: Storage,
    mlflow_client: Any = None,
    _built: dict[int, LineageNode] | None = None,
) -> LineageNode:
    """The lineage tree of one materialization event (each event one node, shared by all its
    consumers). With ``mlflow_client``, nodes that logged an MLflow run also show its git
    commit and the base weights it was configured with."""
    built = {} if _built is None else _built
    if record.storage_id in built:
        return built[record.storage_id]
    materialization = record.asset_materialization
    asset = materialization.asset_key.to_user_string()
    node = LineageNode(
        asset=asset,
        data_version=materialization.tags.get(VERSION_TAG),
        partition=materialization.partition,
        run_id=record.run_id,
        details=_metadata(record),
    )
    built[record.storage_id] = node
    if mlflow_client is not None and "mlflow_run_id" in node.details:
        node.details.update(_mlflow_details(mlflow_client, node.details["mlflow_run_id"]))
    for upstream, event in _upstream_events(materialization):
        if SHARDED_UPSTREAM.get(asset) == upstream:
            records = _shards_at(instance, upstream, event)
        else:
            records = [_record(instance, upstream, event)]
        node.upstream += [
            build_lineage(instance, r, storage, mlflow_client, built) for r in records
        ]
    if asset == "raw_videos" and node.partition:
        _raw_videos(storage, node)
    if asset == "edited_videos" and "manifest" in node.details:
        _edited_videos(storage, node)
    return node


def _upstream_events(materialization: dg.AssetMaterialization) -> list[tuple[str, int]]:
    """(upstream asset, event storage id) of what a materialization read: its own
    ``upstream_events`` metadata when it has some, else Dagster's input pointers."""
    stated = materialization.metadata.get(UPSTREAM_EVENTS)
    if stated is not None:
        return sorted((asset, int(event)) for asset, event in stated.value.items())
    return [
        (tag.removeprefix(POINTER_TAG), int(value))
        for tag, value in sorted(materialization.tags.items())
        if tag.startswith(POINTER_TAG)
    ]


def _edited_videos(storage: Storage, node: LineageNode) -> None:
    """Each edited video with its checksum and its source's, from the run's manifest."""
    try:
        manifest = storage.read_parquet(storage.key_of(node.details["manifest"]))
    except (OSError, ValueError):
        node.details["videos_note"] = "manifest no longer in storage"
        return
    edited = manifest[manifest["status"] == "ok"]
    node.details["videos"] = [
        {
            "uri": row.uri,
            "sha256": row.sha256,
            "source": row.video,
            "source_sha256": row.source_sha256,
        }
        for row in edited.itertuples()
    ]


def _mlflow_details(client: Any, run_id: str) -> dict[str, Any]:
    """The code and base weights behind an MLflow run (empty when the run is gone)."""
    try:
        run = client.get_run(run_id)
    except Exception:  # an audit shows what it can; a missing run is not fatal
        return {"mlflow_run": "not found"}
    details: dict[str, Any] = {"git_commit": run.data.tags.get("viva.git_commit")}
    weights = {
        key.removeprefix("model."): value
        for key, value in run.data.params.items()
        if key in ("model.instructor", "model.transformer", "model.codec")
    }
    if weights:
        details["base_weights"] = weights
    return details


def _materialization_of_run(
    instance: dg.DagsterInstance, asset: str, dagster_run_id: str
) -> dg.EventLogRecord:
    """The materialization of ``asset`` that a Dagster run made, as the asset's event index
    holds it (its storage id is the one other materializations point to; a run's own event
    records may number events differently)."""
    cursor = None
    while True:  # newest first, a page at a time
        page = instance.fetch_materializations(dg.AssetKey(asset), limit=PAGE, cursor=cursor)
        for record in page.records:
            if record.run_id == dagster_run_id:
                return record
        if not page.has_more:
            raise LineageError(f"Dagster run {dagster_run_id} has no materialization of {asset}")
        cursor = page.cursor


def resolve_target(instance: dg.DagsterInstance, target: str, client: Any) -> dg.EventLogRecord:
    """The materialization a target names: ``benchmark`` (the latest benchmark_scores), an
    asset name (its latest materialization), ``models:/<name>/<version>``, ``runs:/<id>`` or
    a bare MLflow run id, looked up with the ``mlflow.MlflowClient`` ``client`` (None: no
    tracking server to ask, so only the first two)."""
    if target == "benchmark":
        target = "benchmark_scores"
    if re.fullmatch(r"[a-z_]+", target):
        found = instance.fetch_materializations(dg.AssetKey(target), limit=1).records
        if not found:
            raise LineageError(f"{target} has not been materialized")
        return found[0]
    if client is None:
        raise LineageError(f"{target}: names an MLflow run or model, and MLflow cannot be reached")
    import mlflow

    try:
        if target.startswith("models:/"):
            model = re.fullmatch(r"models:/([^/']+)/(\d+|latest)", target)
            if model is None:
                raise LineageError(f"{target}: give models:/<name>/<version number or latest>")
            name, version = model.groups()
            if version == "latest":
                versions = [int(v.version) for v in client.search_model_versions(f"name='{name}'")]
                if not versions:
                    raise LineageError(
                        f"{target}: no model {name!r} is registered in MLflow at "
                        f"{client.tracking_uri}"
                    )
                version = str(max(versions))
            run_id = client.get_model_version(name, version).run_id
        else:
            run_id = target.removeprefix("runs:/").split("/")[0]
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise LineageError(
            f"{target}: not found in MLflow at {client.tracking_uri} ({exc})"
        ) from None
    tags = run.data.tags
    if "dagster.run_id" not in tags:
        raise LineageError(f"{target}: MLflow run {run_id} was not made by a Dagster asset")
    return _materialization_of_run(instance, tags["dagster.asset_key"], tags["dagster.run_id"])


def pending_lineage(
    instance: dg.DagsterInstance,
    asset: str,
    upstream: list[str],
    storage: Storage,
    mlflow_client: Any = None,
) -> LineageNode:
    """The lineage of a materialization in progress: the latest materialization of each of
    ``upstream`` (what the running asset reads), under a node for ``asset`` itself."""
    built: dict[int, LineageNode] = {}
    node = LineageNode(asset=asset, data_version="(this run)")
    for key in upstream:
        found = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
        if found:
            node.upstream.append(build_lineage(instance, found[0], storage, mlflow_client, built))
    return node


def nodes_by_asset(tree: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The nodes of a lineage tree as ``to_dict`` (or ``--json``) gives it, grouped by asset,
    in depth-first order: for scripts that audit one kind of node (e.g. every raw video)."""
    found: dict[str, list[dict[str, Any]]] = {}
    stack = [tree]
    while stack:
        node = stack.pop()
        found.setdefault(node["asset"], []).append(node)
        stack.extend(reversed(node.get("upstream", [])))
    return found
