"""An exponential moving average of a model's trainable weights, for sampling and shipping.

Diffusion models sample markedly better from an average of recent weights than from the last
step's: each step's weights carry the noise of its minibatch, and a sampler compounds that
error over all its steps. The average is kept in float32 beside the parameters (sharded like
them under FSDP), updated after every optimizer step, and swapped in for evaluation and export
with :meth:`WeightEma.applied`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from viva_pipelines.train.distributed import drop_gathered_weights


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used for update number ``updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``.

    Early on the average follows the weights closely (0.1 at the first update, 0.5 at the
    ninth), so it does not drag the random initialisation along through a short run.
    """
    return min(decay, (1 + updates) / (10 + updates))


class WeightEma:
    """``shadow = decay·shadow + (1 - decay)·weights`` over ``model``'s trainable parameters."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        weight = 1 - ema_decay_at(self.decay, self.updates)
        for average, param in zip(self.shadow, self.params, strict=True):
            average.lerp_(param.detach().float(), weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own ones again after.
        Each swap also drops any gathered copy of the old weights (FSDP2), so the next forward
        runs on the ones just put in place."""
        with torch.no_grad():
            backup = [p.detach().clone() for p in self.params]
            for param, average in zip(self.params, self.shadow, strict=True):
                param.copy_(average)
        drop_gathered_weights(self.model)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.params, backup, strict=True):
                    param.copy_(saved)
            drop_gathered_weights(self.model)

    @torch.no_grad()
    def take_from_model(self, updates: int) -> None:
        """Make the model's current weights the average (after loading a saved average into
        the model to resume): the counterpart of saving the model's state inside
        :meth:`applied`."""
        for average, param in zip(self.shadow, self.params, strict=True):
            average.copy_(param.detach().float())
        self.updates = updates
