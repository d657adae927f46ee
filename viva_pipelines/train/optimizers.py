"""The SFT optimizer: AdamW (the paper's), or Muon for the transformer blocks' weight matrices
with AdamW for every other parameter (``sft.optim.optimizer``).

Muon keeps SGD momentum per weight matrix and steps along its orthogonalised direction: the
momentum ``U S V^T`` with its singular values pushed towards 1 by a few Newton-Schulz
iterations, so that every direction of the matrix moves at about the same rate instead of the
few large ones AdamW's update is dominated by. It is for the hidden matrices of a network; the
embeddings, the output layer, biases and norm weights stay with AdamW. The update is scaled to
the RMS of an AdamW update (``0.2 * sqrt(max(rows, cols))``), so one learning rate, weight
decay and schedule serve both halves. The demo's DiT is step-bound at its CPU budget
(docs/benchmark.md, "Capacity against steps"), which is where an optimizer that learns more
per step pays; conf/prod keeps the paper's AdamW.

Both halves are one :class:`torch.optim.Optimizer` (one learning-rate schedule, one state dict
for the checkpoints). Muon needs whole matrices: with FSDP's shards it is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.adamw import adamw

#: Muon's quintic Newton-Schulz coefficients. They maximise the slope at zero, so that five
#: iterations take all but the smallest singular values to 0.7-1.2: near 1 is all Muon needs.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalise(matrices: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """About ``U V^T`` of each ``matrix = U S V^T`` (``[..., rows, cols]``: one matrix or a
    stack of them, done at once): the quintic Newton-Schulz iteration on each matrix scaled to a
    spectral norm of at most 1, in float32 (a CPU has no fast bfloat16 for matrices this
    small). Returns the same shape and dtype."""
    a, b, c = NEWTON_SCHULZ
    x = matrices.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    # The Frobenius norm bounds the spectral one.
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(matrices.dtype)


def muon_lr(lr: float, shape: torch.Size) -> float:
    """The learning rate of an orthogonalised update of ``shape``: scaled to the RMS an AdamW
    update has, so that Muon reuses AdamW's learning rate and weight decay."""
    return lr * 0.2 * math.sqrt(max(shape[0], shape[1]))


def is_hidden_matrix(name: str, parameter: torch.Tensor) -> bool:
    """Muon's share of a DiT: the weight matrices inside its blocks (``transformer_blocks``,
    ``single_transformer_blocks``, the token refiner's ``refiner_blocks``); not the patch and
    condition embeddings, the output layer, biases or norm weights."""
    return parameter.ndim == 2 and "blocks." in name


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the parameters :func:`is_hidden_matrix` picks, AdamW for the rest.

    Muon, per matrix ``W`` with gradient ``G``, momentum ``mu`` and weight decay ``wd`` (as
    ``torch.optim.Muon`` with Nesterov momentum and ``match_rms_adamw``, whose iteration runs
    in bfloat16): ``B = mu B + (1 - mu) G``; ``W = W (1 - lr wd) - muon_lr(lr) orthogonalise((1
    - mu) G + mu B)``. The AdamW half is PyTorch's own update (``torch.optim.adamw.adamw``), so
    with no hidden matrices this is exactly AdamW.
    """

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, torch.Tensor]],
        *,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        momentum: float = 0.95,
        eps: float = 1e-8,
    ) -> None:
        hidden, rest = [], []
        for name, parameter in named_parameters:
            if parameter.requires_grad:
                (hidden if is_hidden_matrix(name, parameter) else rest).append(parameter)
        groups = [{"params": hidden, "muon": True}, {"params": rest, "muon": False}]
        defaults = {
            "lr": lr,
            "betas": betas,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "eps": eps,
        }
        super().__init__([g for g in groups if g["params"]], defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, momentum = group["lr"], group["momentum"]
        by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for parameter in group["params"]:
            if parameter.grad is None:
                continue
            state = self.state[parameter]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(parameter)
            buffer = state["momentum_buffer"]
            buffer.lerp_(parameter.grad, 1 - momentum)
            nesterov = parameter.grad.lerp(buffer, momentum)
            by_shape.setdefault(parameter.shape, []).append((parameter, nesterov))
        # Matrices of one shape are orthogonalised as one stack: a DiT has a few shapes and
        # tens of matrices, and small matrix products cost their call more than their maths.
        for shape, pairs in by_shape.items():
            updates = orthogonalise(torch.stack([nesterov for _, nesterov in pairs]))
            for (parameter, _), update in zip(pairs, updates, strict=True):
                parameter.mul_(1 - lr * group["weight_decay"])
                parameter.add_(update, alpha=-muon_lr(lr, shape))

    def _adamw_step(self, group: dict) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for parameter in group["params"]:
            if parameter.grad is None:
                continue
            state = self.state[parameter]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(parameter)
                state["exp_avg_sq"] = torch.zeros_like(parameter)
            params.append(parameter)
            grads.append(parameter.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        adamw(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )


def state_floats(named_parameters: Iterable[tuple[str, torch.Tensor]], kind: str) -> int:
    """The values the optimizer ``kind`` keeps beside the weights: AdamW two moments per
    trainable parameter; Muon one momentum per entry of a hidden matrix, AdamW's two for the
    rest (``train/sizing.py`` plans a step's memory with it)."""
    total = 0
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            muon = kind == "muon" and is_hidden_matrix(name, parameter)
            total += parameter.numel() * (1 if muon else 2)
    return total


def build_optimizer(
    model: torch.nn.Module, kind: str, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """The SFT optimizer ``kind`` (``adamw`` | ``muon``) over ``model``'s parameters."""
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    if kind == "muon":
        return MuonAdamW(model.named_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}; known: adamw, muon")
