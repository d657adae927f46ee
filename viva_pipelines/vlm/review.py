"""VLM review of a synthetic edit pair: keep it or not, and the instruction that matches it.

Generated pairs fail in ways pixel metrics miss (a removal that leaves a ghost, a colour edit
that bleeds onto the background, an instruction naming the wrong object), and the instruction
is written *before* the edit, so it can describe an edit that did not quite happen. A VLM looks
at sampled frames of both videos and either rejects the pair or rewrites the instruction to
match what changed. The prompt lives in ``assets/prompts/pair_review.md`` so it can be tuned
without touching code (its text is part of the cache key, so a new prompt means new answers).

Scores are on a 0-10 scale, end to end: VLMs grade more consistently on a ten-point scale than
on fractions, and keeping the model's own scale avoids a conversion for thresholds in conf.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from viva_pipelines.pairs.types import EDIT_TYPES
from viva_pipelines.vlm.base import VlmBackend
from viva_pipelines.vlm.messages import Message, image_part, text_part

#: The repository's pair-review prompt template.
PAIR_REVIEW_PROMPT = Path(__file__).resolve().parents[2] / "assets" / "prompts" / "pair_review.md"

#: Upper end of :attr:`PairVerdict.score` (the lower end is 0).
SCORE_MAX = 10.0

VERDICT_KEYS = ("keep", "score", "instruction", "reason")
#: The answer's JSON schema, sent with the request for servers with guided decoding
#: (:func:`parse_verdict` still checks every answer).
VERDICT_SCHEMA = {
    "title": "pair_review",
    "type": "object",
    "properties": {
        "keep": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 0, "maximum": int(SCORE_MAX)},
        "instruction": {"type": "string", "minLength": 1},
        "reason": {"type": "string", "minLength": 1},
    },
    "required": list(VERDICT_KEYS),
    "additionalProperties": False,
}

_COMMENT = re.compile(r"<!--.*?-->\s*", re.DOTALL)
_FRAME_MARKER = re.compile(r"^\$(source_frames|target_frames)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class PairVerdict:
    """The VLM's decision on one pair. ``score`` is in ``[0, 10]``; ``instruction`` is the
    rewritten instruction (non-empty whenever ``keep``); ``reason`` explains the decision."""

    keep: bool
    score: float
    instruction: str
    reason: str


def key_problem(data: dict[str, Any], expected: Sequence[str]) -> str | None:
    """What is wrong with an answer's keys (missing, unexpected), or ``None``: strict answers
    have exactly the expected keys."""
    keys = set(data)
    if keys == set(expected):
        return None
    missing = [key for key in expected if key not in keys]
    unexpected = sorted(keys - set(expected))
    return (
        f"the keys must be exactly {', '.join(expected)}"
        + (f"; missing: {', '.join(missing)}" if missing else "")
        + (f"; unexpected: {', '.join(unexpected)}" if unexpected else "")
    )


def parse_verdict(data: dict[str, Any]) -> PairVerdict:
    """Strictly validate a VLM answer. Every problem is listed in the ``ValueError``, because the
    message goes back to the model in the corrective retry."""
    problems = [problem] if (problem := key_problem(data, VERDICT_KEYS)) else []
    keep, score = data.get("keep"), data.get("score")
    instruction, reason = data.get("instruction"), data.get("reason")
    if "keep" in data and not isinstance(keep, bool):
        problems.append(f"keep must be true or false, got {keep!r}")
    if "score" in data:
        if isinstance(score, bool) or not isinstance(score, int | float):
            problems.append(f"score must be a number, got {score!r}")
        elif not (math.isfinite(score) and 0 <= score <= SCORE_MAX):
            problems.append(f"score must be between 0 and {SCORE_MAX:g}, got {score!r}")
    if "instruction" in data and not isinstance(instruction, str):
        problems.append(f"instruction must be a string, got {instruction!r}")
    elif keep is True and isinstance(instruction, str) and not instruction.strip():
        problems.append("instruction must not be empty when keep is true")
    if "reason" in data and not (isinstance(reason, str) and reason.strip()):
        problems.append(f"reason must be a non-empty string, got {reason!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return PairVerdict(
        keep=keep, score=float(score), instruction=instruction.strip(), reason=reason.strip()
    )


def sample_frames(frames: np.ndarray, k: int) -> np.ndarray:
    """``k`` frames evenly spaced over the clip, first and last included (all of them when the
    clip has ``k`` or fewer): enough for a VLM to judge temporal consistency at a fixed cost."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"expected frames [T, H, W, C] with T >= 1, got shape {frames.shape}")
    if len(frames) <= k:
        return frames
    return frames[np.linspace(0, len(frames) - 1, k).round().astype(int)]


@lru_cache(maxsize=8)
def load_prompt(path: Path = PAIR_REVIEW_PROMPT) -> str:
    """A prompt template without its ``<!-- … -->`` maintainer comments."""
    return _COMMENT.sub("", path.read_text(encoding="utf-8")).strip()


def build_review_messages(
    source_frames: np.ndarray,
    target_frames: np.ndarray,
    instruction: str,
    edit_type: str,
    template: str,
) -> list[Message]:
    """One user message: the template's text with the frames inserted where its
    ``$source_frames`` / ``$target_frames`` lines stand."""
    values = {
        "instruction": instruction,
        "edit_type": edit_type,
        "n_frames": str(len(source_frames)),
    }
    frames = {"source_frames": source_frames, "target_frames": target_frames}
    chunks = _FRAME_MARKER.split(template)  # text, marker name, text, marker name, text
    markers = chunks[1::2]
    if sorted(markers) != sorted(frames):
        raise ValueError(
            "the review prompt must contain $source_frames and $target_frames once each, "
            f"alone on a line; found {markers}"
        )
    parts: list[dict[str, Any]] = []
    for index, chunk in enumerate(chunks):
        if index % 2:
            parts.extend(image_part(frame) for frame in frames[chunk])
        elif chunk.strip():
            parts.append(text_part(Template(chunk.strip()).substitute(values)))
    return [{"role": "user", "content": parts}]


def check_video(name: str, frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"{name} must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")


def review_pair(
    client: VlmBackend,
    source_frames: np.ndarray,
    target_frames: np.ndarray,
    instruction: str,
    edit_type: str,
    *,
    max_frames: int = 4,
    template: str | None = None,
) -> PairVerdict:
    """Ask ``client`` (HTTP or local backend) to review one pair. Clips longer than
    ``max_frames`` are sampled at the same time steps in both videos, so the VLM compares like
    with like. ``template`` overrides the repository prompt (its text, not a path)."""
    check_video("source_frames", source_frames)
    check_video("target_frames", target_frames)
    if source_frames.shape != target_frames.shape:
        raise ValueError(
            f"source and target must have the same shape, got {source_frames.shape} "
            f"and {target_frames.shape}"
        )
    if edit_type not in EDIT_TYPES:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {EDIT_TYPES}")
    messages = build_review_messages(
        sample_frames(source_frames, max_frames),
        sample_frames(target_frames, max_frames),
        instruction,
        edit_type,
        template if template is not None else load_prompt(),
    )
    return client.complete_json(messages, parse_verdict, VERDICT_SCHEMA)
