"""VIE-Bench-style VLM judge: three 0-10 integer scores per benchmark instance.

Pixel metrics cannot tell whether an edit did what the instruction asked, so a VLM looks at
sampled frames of the source and the edited video and grades instruction following, source
fidelity and edit quality; the "VLM avg" of a benchmark is the mean of the three.

Everything model-facing is reused from :mod:`viva_pipelines.vlm`: any :class:`VlmBackend` (the
OpenAI-compatible HTTP client or the local ``transformers`` model) answers, frames travel as PNG
data URLs, :meth:`VlmBackend.complete_json` does the single corrective retry, and answers are
cached by :func:`viva_pipelines.vlm.base.cache_key` in a :mod:`viva_pipelines.vlm.cache` store.
What this module adds is the rubric (``assets/prompts/judge_rubric.md``), strict validation of
the scores, and turning failures into recorded results: a benchmark of hundreds of instances
must not stop because one answer was garbage or the endpoint was down for a minute.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from viva_pipelines.vlm.base import VlmBackend, VlmError, cache_key, parse_json_reply
from viva_pipelines.vlm.cache import ByteStore, StorageLike, as_byte_store
from viva_pipelines.vlm.messages import Message
from viva_pipelines.vlm.review import (
    build_review_messages,
    check_video,
    key_problem,
    load_prompt,
    sample_frames,
)

log = logging.getLogger(__name__)

#: The repository's judge rubric template.
JUDGE_RUBRIC_PROMPT = Path(__file__).resolve().parents[2] / "assets" / "prompts" / "judge_rubric.md"

#: The answer's keys, in the order they are reported.
SCORE_KEYS = ("instruction_following", "source_fidelity", "edit_quality")

#: Scores are integers in ``[SCORE_MIN, SCORE_MAX]``: VLMs grade more consistently on a small
#: integer scale, and integers make judgements comparable across runs and models.
SCORE_MIN, SCORE_MAX = 0, 10
#: The answer's JSON schema, sent with the request for servers with guided decoding
#: (:func:`validate_judgement` still checks every answer).
JUDGEMENT_SCHEMA = {
    "title": "edit_judgement",
    "type": "object",
    "properties": {
        key: {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX} for key in SCORE_KEYS
    },
    "required": list(SCORE_KEYS),
    "additionalProperties": False,
}

#: Cache entries live under this prefix so they never collide with other answers in one store.
CACHE_PREFIX = "judge"


class JudgeParseError(ValueError):
    """A judge answer that is not exactly the three integer scores. A ``ValueError`` so that
    :meth:`VlmBackend.complete_json` treats it as an unusable reply and sends its one corrective
    retry, with this message telling the model what to fix."""


@dataclass(frozen=True)
class JudgeScores:
    """The three integer scores (0-10) a VLM gave one edit."""

    instruction_following: int
    source_fidelity: int
    edit_quality: int

    @property
    def avg(self) -> float:
        """The benchmark's "VLM avg": the unweighted mean of the three scores."""
        return (self.instruction_following + self.source_fidelity + self.edit_quality) / 3

    def as_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in SCORE_KEYS}


@dataclass(frozen=True)
class JudgeResult:
    """One judged instance: ``scores`` when the judge answered usably, otherwise ``None`` and
    ``error`` saying why, so a benchmark report can count and show failed judgements instead of
    silently dropping them."""

    scores: JudgeScores | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.scores is not None


def validate_judgement(data: dict[str, Any]) -> JudgeScores:
    """Strictly validate a decoded answer. Every problem is listed, because the message goes
    back to the model in the corrective retry and into the failure record."""
    problems = [problem] if (problem := key_problem(data, SCORE_KEYS)) else []
    for key in SCORE_KEYS:
        if key not in data:
            continue
        value = data[key]
        # type() and not isinstance(): bool is an int subclass, and true is not a score.
        if type(value) is not int:
            problems.append(f"{key} must be an integer, got {value!r}")
        elif not SCORE_MIN <= value <= SCORE_MAX:
            problems.append(f"{key} must be between {SCORE_MIN} and {SCORE_MAX}, got {value}")
    if problems:
        raise JudgeParseError("; ".join(problems))
    return JudgeScores(**{key: data[key] for key in SCORE_KEYS})


def parse_judgement(text: str) -> JudgeScores:
    """The scores in a raw reply: one JSON object, optionally inside a ```json fence, and
    nothing else. Raises :class:`JudgeParseError` with the reason."""
    try:
        data = parse_json_reply(text)
    except ValueError as exc:
        raise JudgeParseError(str(exc)) from exc
    return validate_judgement(data)


def build_judge_messages(
    source_frames: np.ndarray,
    edited_frames: np.ndarray,
    instruction: str,
    template: str,
) -> list[Message]:
    """One user message: the rubric text with both videos' frames inserted at its markers.
    Reuses the pair-review builder so the two prompts share one marker syntax."""
    return build_review_messages(source_frames, edited_frames, instruction, "", template)


def judge_edit(
    backend: VlmBackend,
    source_frames: np.ndarray,
    edited_frames: np.ndarray,
    instruction: str,
    *,
    max_frames: int = 4,
    cache: ByteStore | StorageLike | str | os.PathLike[str] | None = None,
    template: str | None = None,
) -> JudgeResult:
    """Ask ``backend`` to score one edit. Never raises for the judge's fault: an unusable answer
    gets one corrective retry (a second request), and if that fails too, or the endpoint fails
    after the client's own retries (:class:`VlmError`), the result records the reason.

    Both videos are sampled to at most ``max_frames`` frames each, evenly over their length (an
    edited video may have another frame count or size than its source). ``cache`` (a store, a
    ``Storage`` or a directory) keeps validated scores under a hash of the frames, instruction,
    rubric text, model id and generation parameters; failures are never cached, so a rerun
    tries them again. ``template`` overrides the repository rubric (its text, not a path).
    Invalid inputs (not ``uint8 [T, H, W, 3]``, an empty instruction) raise ``ValueError``:
    those are the caller's bugs, not a judgement.
    """
    check_video("source_frames", source_frames)
    check_video("edited_frames", edited_frames)
    if not instruction.strip():
        raise ValueError("instruction must not be empty")
    messages = build_judge_messages(
        sample_frames(source_frames, max_frames),
        sample_frames(edited_frames, max_frames),
        instruction,
        template if template is not None else load_prompt(JUDGE_RUBRIC_PROMPT),
    )
    store = as_byte_store(cache)
    entry = f"{CACHE_PREFIX}/{_key(backend, messages)}.json"
    if store is not None:
        cached = _cache_get(store, entry)
        if cached is not None:
            try:
                return JudgeResult(parse_judgement(cached))
            except JudgeParseError as exc:  # the validator got stricter since it was cached
                log.info("cached judgement %s no longer validates (%s); asking again", entry, exc)
    try:
        scores = backend.complete_json(messages, validate_judgement, JUDGEMENT_SCHEMA)
    except VlmError as exc:
        log.warning("judge failed: %s", exc)
        return JudgeResult(None, error=str(exc))
    if store is not None:
        _cache_put(store, entry, json.dumps(scores.as_dict(), sort_keys=True))
    return JudgeResult(scores)


def _key(backend: VlmBackend, messages: list[Message]) -> str:
    """The same content hash the backend's own cache uses (images are inside ``messages`` as
    data URLs and the rubric as text), fanned out in two levels to keep directories small."""
    key = cache_key(backend.model_id, messages, backend.params)
    return f"{key[:2]}/{key}"


# The cache is an optimisation: a store that fails must not fail the benchmark.
def _cache_get(store: ByteStore, entry: str) -> str | None:
    try:
        data = store.get(entry)
    except OSError as exc:
        log.warning("judge cache read failed for %s (%s); asking the model", entry, exc)
        return None
    return None if data is None else data.decode("utf-8", errors="replace")


def _cache_put(store: ByteStore, entry: str, answer: str) -> None:
    try:
        store.put(entry, answer.encode("utf-8"))
    except OSError as exc:
        log.warning("judge cache write failed for %s (%s); answer not cached", entry, exc)
