"""Resumable training state in storage: weights, optimizer, LR scheduler and step.

A checkpoint is ``{prefix}/checkpoints/step-XXXXXXXX/`` holding ``model.safetensors``,
``training_state.pt`` (optimizer and scheduler state: tensors and plain containers only, so
it loads with ``torch.load(weights_only=True)``), ``ema.safetensors`` when the run keeps an
average of its weights, and ``state.json``, written last: a checkpoint
without it is incomplete and ignored. Collective under DDP/FSDP (every rank calls save and
load); rank 0 writes.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from viva_pipelines.storage import Storage
from viva_pipelines.train.ema import WeightEma

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"step-(\d{8})$")


def checkpoint_prefix(prefix: str, step: int) -> str:
    return f"{prefix}/checkpoints/step-{step:08d}"


def completed_checkpoints(storage: Storage, prefix: str) -> list[int]:
    """Steps of the complete checkpoints under ``prefix``, ascending."""
    steps = set()
    for key in storage.list(f"{prefix}/checkpoints"):
        parts = key.rsplit("/", 2)
        if len(parts) == 3 and parts[2] == "state.json" and (m := _STEP_DIR.search(parts[1])):
            steps.add(int(m.group(1)))
    return sorted(steps)


def save_checkpoint(
    storage: Storage,
    prefix: str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    is_main: bool,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    ema: WeightEma | None = None,
) -> str | None:
    """Save the state after ``step`` optimizer steps; keeps the newest ``keep`` checkpoints."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    ema_state = None
    if ema is not None:
        with ema.applied():  # copied: on CPU the state dict shares the parameters' storage
            ema_state = {
                k: v.clone() for k, v in get_model_state_dict(model, options=options).items()
            }
    if not is_main:
        return None
    where = checkpoint_prefix(prefix, step)
    storage.write_bytes(f"{where}/model.safetensors", save_safetensors(_contiguous(model_state)))
    if ema_state is not None:
        storage.write_bytes(f"{where}/ema.safetensors", save_safetensors(_contiguous(ema_state)))
        extra = {**(extra or {}), "ema_updates": ema.updates}
    buffer = io.BytesIO()
    torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict()}, buffer)
    storage.write_bytes(f"{where}/training_state.pt", buffer.getvalue())
    storage.write_json(f"{where}/state.json", {"step": step, **(extra or {})})
    for old in completed_checkpoints(storage, prefix)[:-keep]:
        stale = checkpoint_prefix(prefix, old)
        # state.json first: a process killed mid-delete leaves an incomplete (ignored) folder,
        # never a "complete" checkpoint with its weights gone.
        storage.delete(f"{stale}/state.json")
        storage.delete(stale)
    return storage.uri(where)


def load_latest_checkpoint(
    storage: Storage,
    prefix: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    ema: WeightEma | None = None,
) -> dict[str, Any] | None:
    """Restore the newest complete checkpoint into the given objects; its ``state.json``
    (with ``step``) or ``None`` when there is none."""
    steps = completed_checkpoints(storage, prefix)
    if not steps:
        return None
    where = checkpoint_prefix(prefix, steps[-1])
    model_state = load_safetensors(storage.read_bytes(f"{where}/model.safetensors"))
    state = torch.load(
        io.BytesIO(storage.read_bytes(f"{where}/training_state.pt")), weights_only=True
    )
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=True),
    )
    scheduler.load_state_dict(state["scheduler"])
    saved = storage.read_json(f"{where}/state.json")
    if ema is not None and storage.exists(f"{where}/ema.safetensors"):
        ema_state = load_safetensors(storage.read_bytes(f"{where}/ema.safetensors"))
        with ema.applied():  # load the average through the model, then put its weights back
            set_model_state_dict(model, ema_state, options=StateDictOptions(full_state_dict=True))
            ema.take_from_model(saved.get("ema_updates", 0))
    elif ema is not None:  # a checkpoint from before the average was kept: start it here
        ema.take_from_model(0)
    return saved


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous() for name, tensor in state.items()}
