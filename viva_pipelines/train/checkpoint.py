"""Resumable training state in storage: weights, optimizer, LR scheduler and step.

A checkpoint is ``{prefix}/checkpoints/step-XXXXXXXX/`` holding ``model.safetensors``,
``training_state.pt`` (optimizer and scheduler state: tensors and plain containers only, so
it loads with ``torch.load(weights_only=True)``) and ``state.json``, written last: a checkpoint
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
    get_state_dict,
    set_state_dict,
)

from viva_pipelines.storage import Storage

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
) -> str | None:
    """Save the state after ``step`` optimizer steps; keeps the newest ``keep`` checkpoints."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if not is_main:
        return None
    where = checkpoint_prefix(prefix, step)
    storage.write_bytes(f"{where}/model.safetensors", save_safetensors(_contiguous(model_state)))
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
    return storage.read_json(f"{where}/state.json")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous() for name, tensor in state.items()}
