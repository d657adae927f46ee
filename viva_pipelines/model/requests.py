"""What an edit needs, checked and located before any model library is imported: the request
(:func:`check_request`) and the model (:func:`resolve_model`). ``viva edit`` refuses a bad
request or a folder that holds no model in well under a second, instead of after the seconds
that diffusers, transformers and PyTorch take to import."""

from __future__ import annotations

import os
from pathlib import Path

import av

#: The file that makes a folder a VIVA model (written by ``VivaEditPipeline.save_pretrained``).
MODEL_FILE = "viva_model.json"


class EditRequestError(ValueError):
    """An edit request that cannot be carried out; the message names the file or value."""


class MissingInputError(FileNotFoundError):
    """A model, adapter or requests file that the configuration names does not exist (as
    opposed to a store or registry that cannot be reached): trying again cannot help."""


#: What an edited video may be called: it is always written as an MP4 (H.264, the source's
#: audio copied), which these names tell players to expect (QuickTime reads MP4 as .mov).
OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov")


def check_request(
    video: str | os.PathLike,
    instruction: str,
    out: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Refuse a bad request before any model is loaded, naming what is wrong."""
    video, out = Path(video), Path(out)
    if video.is_dir():
        raise EditRequestError(f"video {video}: a folder, not a video file")
    if not video.is_file():
        what = "not a regular file" if video.exists() else "no such file"  # /dev/zero, a FIFO
        raise EditRequestError(f"video {video}: {what}")
    try:
        with av.open(os.fspath(video)) as container:
            if not container.streams.video:
                raise EditRequestError(f"video {video}: has no video stream")
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise EditRequestError(f"video {video}: not a readable video ({reason})") from exc
    if not instruction or not instruction.strip():
        raise EditRequestError("the instruction is empty")
    if reference is not None and Path(reference).is_dir():
        raise EditRequestError(f"reference {reference}: a folder, not an image file")
    if reference is not None and not Path(reference).is_file():
        what = "not a regular file" if Path(reference).exists() else "no such file"
        raise EditRequestError(f"reference {reference}: {what}")
    if out.is_dir():
        raise EditRequestError(f"{out} is a folder; name the output file (out.mp4)")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise EditRequestError(
            f"{out}: the edit is written as an H.264 MP4; name it {', '.join(OUTPUT_SUFFIXES)}"
        )
    if out.exists() and not overwrite:
        raise EditRequestError(f"{out} exists (pass --overwrite to replace it)")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EditRequestError(f"cannot create the output folder {folder}: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK):
        raise EditRequestError(f"the output folder {folder} is not writable")


def resolve_model(
    model: str | Path, *, tracking_uri: str | None = None, lora: bool = False
) -> Path:
    """A local model (or, with ``lora``, adapter) directory for ``model``: a directory as is,
    or an MLflow URI (``models:/viva-sft/3``, ``runs:/<id>/model``) downloaded from
    ``tracking_uri``."""
    text = str(model)
    if "://" in text or text.startswith("models:/") or text.startswith("runs:/"):
        import mlflow

        from viva_pipelines.tracking import TrackingServerUnreachable, check_reachable

        if tracking_uri:  # models:/ URIs resolve through the registry, which follows this
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        if text.startswith(("models:/", "runs:/")):  # else a store URI, no server involved
            try:  # MLflow's own client would retry for minutes before failing
                check_reachable(mlflow.get_tracking_uri())
            except TrackingServerUnreachable as exc:
                raise TrackingServerUnreachable(f"{text}: cannot fetch the model: {exc}") from None
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=text)
        except mlflow.exceptions.MlflowException as exc:
            missing = exc.error_code == "RESOURCE_DOES_NOT_EXIST"
            error = MissingInputError if missing else FileNotFoundError
            raise error(f"{text}: cannot fetch the model from MLflow: {exc}") from None
        return Path(local)
    path = Path(text)
    if lora:
        if not path.is_dir():
            raise MissingInputError(f"{path}: no such LoRA directory")
        return path
    if not (path / MODEL_FILE).is_file():
        raise MissingInputError(f"{path}: not a VIVA model directory (no {MODEL_FILE})")
    return path
