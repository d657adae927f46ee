"""The learning-rate schedule of every trainer here: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """The LR multiplier at optimizer step ``step`` (0-based): ``(step + 1) / warmup`` for the
    first ``warmup`` steps, then a half cosine from 1 down to ``floor`` at step ``total``, held
    there afterwards (a resumed or extended run never sees the LR rise again)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
