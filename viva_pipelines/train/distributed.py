"""Process-group setup for ``torchrun`` and the two ways we wrap a model (DDP, FSDP2).

A plain ``python -m ...`` run is a world of one and needs no process group; under ``torchrun``
the group uses NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from viva_pipelines.train.config import RuntimeConfig


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar tensor over ranks (a copy; the input is untouched)."""
        value = value.detach().clone()
        if self.active:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value


def pick_device(preference: str, local_rank: int) -> torch.device:
    """``auto`` takes this rank's GPU when there is one; ``cpu``/``cuda``/``cuda:N`` as given."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


@contextmanager
def distributed(device_preference: str = "auto") -> Iterator[DistContext]:
    """Join the ``torchrun`` process group if there is one; leave it on exit."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    try:
        yield DistContext(rank, world_size, local_rank, device)
    finally:
        if started:
            dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, ctx: DistContext, parallel: str) -> torch.nn.Module:
    """DDP (replicated weights; small and mid-size models) or FSDP2 ``fully_shard`` per
    transformer block (sharded weights, gradients and optimizer state; large models).
    A world of one gets the bare model."""
    if not ctx.active:
        return model
    if parallel == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for name in ("transformer_blocks", "single_transformer_blocks"):
            for block in getattr(model, name, []):
                fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel mode {parallel!r}; known: ddp, fsdp")


def drop_gathered_weights(model: torch.nn.Module) -> None:
    """Make the next forward gather the current sharded weights. FSDP2 keeps the root module's
    gathered weights after a forward that no backward follows (evaluation), and the next
    forward reuses them: after the sharded weights are changed in place (the weights' average
    swapped in for evaluation and out again), training would run on the stale copy. DDP and a
    bare model hold no gathered copy."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Backward passes inside skip (``enabled`` False) or do the all-reduce of gradients
    across ranks: gradient accumulation syncs on its last micro-batch only. DDP's
    ``no_sync``, FSDP2's ``set_requires_gradient_sync``; a bare model has nothing to sync."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with nullcontext() if enabled else model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def precision(runtime: RuntimeConfig, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A factory of the forward passes' precision context: bf16 autocast when
    ``runtime.mixed_precision`` is bf16 (or auto, on a GPU), else nothing."""
    on_gpu = device.type == "cuda"
    if runtime.mixed_precision == "bf16" or (runtime.mixed_precision == "auto" and on_gpu):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def apply_gradient_checkpointing(model: torch.nn.Module, runtime: RuntimeConfig) -> None:
    """Recompute the blocks' activations in the backward pass when
    ``runtime.gradient_checkpointing`` is on (or auto, on a GPU): memory for compute."""
    on_gpu = next(model.parameters()).device.type == "cuda"
    if runtime.gradient_checkpointing == "on" or (
        runtime.gradient_checkpointing == "auto" and on_gpu
    ):
        model.enable_gradient_checkpointing()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
