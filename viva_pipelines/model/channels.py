"""How an editing DiT's input channels are laid out. Plain numbers, no model library: the
training assets' checks of ``models.transformer`` (:mod:`viva_pipelines.train.preflight`) read
them while the definitions load."""

from __future__ import annotations

#: Noisy, source and reference latents are stacked on channels, in this order.
CONDITION_STREAMS = 3
#: Input channels that hold each latent cell's absolute (row, column) place, when a model has
#: them (:func:`viva_pipelines.model.transformer.editing_input`).
POSITION_CHANNELS = 2


def reads_positions(in_channels: int) -> bool:
    """Whether an editing DiT reading ``in_channels`` channels has the coordinate channels (its
    latents come in :data:`CONDITION_STREAMS` equal streams, so only they leave a remainder)."""
    return in_channels % CONDITION_STREAMS == POSITION_CHANNELS
