"""Edit a stored requests file into storage: the library half of the ``edited_videos`` asset.

A requests file is JSONL, one ``{"video", "instruction", "reference"?, "out"}`` per line (the
format of ``viva edit --batch``), stored locally or on S3. ``video`` and ``reference`` are keys
under the requests' root (a folder or ``s3://`` prefix) or full URIs; ``out`` is a key under the
run's output prefix. A key that climbs out of its root is refused, naming it. Inputs are
fetched one request at a time, each output is uploaded as soon as it is written, and a bad line
or a failed edit is a ``failed`` row with its reason while the rest go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from viva_pipelines.config.schema import InferenceSettings
from viva_pipelines.manifests import FAILED, typed_frame
from viva_pipelines.model.pipeline import VivaEditPipeline
from viva_pipelines.model.requests import EditRequestError, MissingInputError
from viva_pipelines.model.whole_video import (
    EditRequest,
    Placed,
    Placement,
    edit_batch,
)
from viva_pipelines.previews import to_png
from viva_pipelines.storage import Storage, file_location, normalise_key, sha256_file

MANIFEST = "manifest.parquet"
#: One row per request line: what was asked, what came out (or why not), and the checksums
#: that tie an output to its input.
MANIFEST_SCHEMA = {
    "line": "Int64",
    "status": "string",
    "reason": "string",
    "video": "string",
    "instruction": "string",
    "reference": "string",
    "out": "string",
    "uri": "string",
    "sha256": "string",
    "source_sha256": "string",
    "frames": "Int64",
    "fps": "Float64",
    "width": "Int64",
    "height": "Int64",
    "seconds": "Float64",
    "preview": "string",
}


@dataclass
class StoredEdits:
    """The outcome of one requests file: the manifest as written and where it lives."""

    manifest: pd.DataFrame
    manifest_key: str
    previews: list[tuple[int, bytes]]  # (line, PNG: source | edit, one row per sampled frame)

    @property
    def counts(self) -> dict[str, int]:
        failed = int(self.manifest["status"].eq(FAILED).sum())
        return {
            "requests": len(self.manifest),
            "edited": len(self.manifest) - failed,
            "failed": failed,
        }


def _input(root: Storage, name: str, what: str, endpoint_url: str | None) -> tuple[Storage, str]:
    """The storage and key of a request's input: a URI or absolute path as given, else a key
    under the requests' root (refused if it climbs out)."""
    if "://" in name or name.startswith("/"):
        return file_location(name, endpoint_url=endpoint_url)
    try:
        return root, normalise_key(name)
    except ValueError as exc:
        raise EditRequestError(f"{what} {name!r}: {exc}") from None


def stored_placement(
    root: Storage, sink: Storage, prefix: str, scratch: Path, *, endpoint_url: str | None = None
) -> Placement:
    """Fetch a request's inputs from ``root`` (or their URIs) into ``scratch``, and upload its
    output to ``{prefix}/{out}`` in ``sink`` when the edit succeeded; ``details`` get the
    output's URI and checksum and the source's checksum. Two requests writing one ``out`` are
    refused (the second would replace the first)."""
    taken: dict[str, int] = {}

    @contextmanager
    def place(request: EditRequest) -> Iterator[Placed]:
        try:
            out = normalise_key(request.out)
        except ValueError as exc:
            raise EditRequestError(f"out {request.out!r}: {exc}") from None
        if out in taken:
            raise EditRequestError(f"out {out} is already line {taken[out]}'s output")
        with ExitStack() as stack:
            store, key = _input(root, request.video, "video", endpoint_url)
            if not store.exists(key):
                raise EditRequestError(f"video {store.uri(key)}: no such file")
            video = stack.enter_context(store.local_path(key))
            reference = None
            if request.reference:
                store, key = _input(root, request.reference, "reference", endpoint_url)
                if not store.exists(key):
                    raise EditRequestError(f"reference {store.uri(key)}: no such file")
                reference = stack.enter_context(store.local_path(key))
            local_out = scratch / f"line-{request.line}" / Path(out).name
            placed = Placed(video, local_out, reference)
            yield placed
            key = f"{prefix}/{out}"
            placed.details = {
                "uri": sink.put_file(local_out, key),
                "sha256": sha256_file(local_out),
                "source_sha256": sha256_file(video),
            }
            taken[out] = request.line
            local_out.unlink()

    return place


def edit_stored_requests(
    load: Callable[[], VivaEditPipeline],
    requests_uri: str,
    root: Storage,
    sink: Storage,
    prefix: str,
    scratch: Path,
    *,
    endpoint_url: str | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> StoredEdits:
    """Edit every request of the requests file at ``requests_uri`` (inputs under ``root``),
    writing the outputs, their previews (``{prefix}/previews/line-N.png``) and the manifest
    (``{prefix}/manifest.parquet``) to ``sink``. ``options``: ``edit_whole_video``'s keywords
    (``preview_frames`` > 0 for previews)."""
    store, key = file_location(requests_uri, endpoint_url=endpoint_url)
    if not store.exists(key):
        raise MissingInputError(f"requests {requests_uri}: no such file")
    # utf-8-sig: the byte-order mark some Windows editors write first is not text
    lines = store.read_bytes(key).decode("utf-8-sig", errors="replace").splitlines()
    place = stored_placement(root, sink, prefix, scratch, endpoint_url=endpoint_url)
    results = edit_batch(load, lines, place, on_result=on_result, **options)
    previews = []
    for result in results:
        image: np.ndarray | None = result.pop("preview", None)
        if image is not None:
            png = to_png(image)
            result["preview"] = sink.write_bytes(
                f"{prefix}/previews/line-{result['line']}.png", png
            )
            previews.append((result["line"], png))
    manifest = typed_frame(results, MANIFEST_SCHEMA)
    manifest_key = f"{prefix}/{MANIFEST}"
    sink.write_parquet(manifest_key, manifest)
    return StoredEdits(manifest, manifest_key, previews)


def run_edit_requests(
    cfg: InferenceSettings,
    model_dir: Path,
    lora_dir: Path | None,
    root: Storage,
    sink: Storage,
    prefix: str,
    scratch: Path,
    *,
    endpoint_url: str | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> StoredEdits:
    """``cfg.requests`` edited by the model in ``model_dir`` (plus the LoRA in ``lora_dir``)
    with ``cfg``'s sampling, output and preview settings, on ``cfg.device``; the model is
    loaded at the first valid request (:func:`edit_stored_requests`)."""
    from viva_pipelines.train.distributed import pick_device

    device = str(pick_device(cfg.device, 0))

    def load() -> VivaEditPipeline:
        pipeline = VivaEditPipeline.from_pretrained(model_dir, device=device)
        return pipeline.load_lora(lora_dir) if lora_dir else pipeline

    return edit_stored_requests(
        load,
        cfg.requests,
        root,
        sink,
        prefix,
        scratch,
        endpoint_url=endpoint_url,
        on_result=on_result,
        progress=False,
        preview_frames=cfg.preview_frames,
        **cfg.edit_options(),
    )


def log_edits(outcome: StoredEdits, cfg: InferenceSettings, model_uri: str) -> None:
    """Into the active MLflow run: what was edited with, the counts, the manifest and the
    previews (not the videos: they stay in storage)."""
    import tempfile

    import mlflow

    from viva_pipelines.tracking import log_metrics, log_params, set_tags

    log_params(
        {
            "requests": cfg.requests,
            "model": model_uri,
            "lora": cfg.lora or "",
            "preserve_unchanged": cfg.preserve_unchanged,
            "crf": cfg.crf,
        }
    )
    log_metrics(outcome.counts)
    set_tags({"viva.model_uri": model_uri, "viva.lora_uri": cfg.lora or ""})
    with tempfile.TemporaryDirectory() as folder:
        outcome.manifest.to_parquet(Path(folder, MANIFEST))
        for line, png in outcome.previews:
            Path(folder, f"line-{line}.png").write_bytes(png)
        mlflow.log_artifacts(folder, "edited_videos")
