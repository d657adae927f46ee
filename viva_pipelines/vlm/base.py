"""What every VLM backend shares: JSON answers, validation, one corrective retry and the cache.

Backends (the HTTP chat-completions client, the local ``transformers`` model) only implement
:meth:`VlmBackend._complete` — messages (and the answer's JSON schema) in, reply text out.
Everything that decides whether a reply is *usable* lives here once, so the QC step and the
benchmark judges behave the same whichever model answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from viva_pipelines.vlm.cache import ByteStore, StorageLike, as_byte_store
from viva_pipelines.vlm.messages import Message

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bump when the meaning of a cached entry changes, to orphan every older entry at once.
CACHE_VERSION = 1

#: Exceptions a ``validate`` callable may raise to say "this answer is unusable, and why".
VALIDATION_ERRORS = (ValueError, TypeError, KeyError)

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.DOTALL)
_MAX_REASON_CHARS = 500


class VlmError(RuntimeError):
    """A VLM call that produced no usable answer; the message says which endpoint/model and why."""


def parse_json_reply(text: str) -> dict[str, Any]:
    """The JSON object in a reply, tolerating the one wrapper models add despite instructions
    (a ```json fence). Raises :class:`ValueError` with a reason the model can act on."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        raise ValueError("the reply was empty")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reply is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"the reply must be a JSON object, got a JSON {type(data).__name__}")
    return data


def cache_key(model: str, messages: Sequence[Message], params: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of everything that determines an answer. Images are inside
    ``messages`` as data URLs, so a changed pixel is a changed key."""
    document = {"v": CACHE_VERSION, "model": model, "messages": list(messages), "params": params}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _short(reason: object) -> str:
    text = str(reason)
    return text if len(text) <= _MAX_REASON_CHARS else text[:_MAX_REASON_CHARS] + "…"


def corrective_message(reason: str) -> Message:
    """The follow-up sent after an unusable reply. Telling the model *what* was wrong fixes most
    slips (a missing key, a score out of range) in one turn."""
    return {
        "role": "user",
        "content": (
            f"Your previous reply could not be used: {_short(reason)}. "
            "Reply again with only the corrected JSON object: no markdown, no other text."
        ),
    }


class VlmBackend(ABC):
    """A model that answers chat messages; subclasses provide :meth:`_complete`."""

    def __init__(
        self, *, cache: ByteStore | StorageLike | str | os.PathLike[str] | None = None
    ) -> None:
        self.cache = as_byte_store(cache)

    @property
    @abstractmethod
    def model_id(self) -> str:
        """Identifies the model in cache keys: two backends with the same id are interchangeable."""

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Generation parameters that change answers (temperature, token limit, …)."""

    @abstractmethod
    def describe(self) -> str:
        """Where answers come from, for error messages (never containing secrets)."""

    @abstractmethod
    def _complete(self, messages: Sequence[Message], schema: dict[str, Any] | None = None) -> str:
        """One model turn: the assistant's reply text. ``schema``: the JSON schema the answer
        must follow, for backends that can hold the model to it (guided decoding); ``None``:
        free text. Raises :class:`VlmError` on failure."""

    def complete(self, messages: Sequence[Message], schema: dict[str, Any] | None = None) -> str:
        """One turn as it comes (what a chat-completions server answers): no parsing, no cache."""
        return self._complete(messages, schema)

    def complete_json(
        self,
        messages: Sequence[Message],
        validate: Callable[[dict[str, Any]], T],
        schema: dict[str, Any] | None = None,
    ) -> T:
        """Ask, parse the reply as a JSON object and pass it through ``validate`` (which raises
        ``ValueError``/``TypeError``/``KeyError`` to reject it). ``schema``: the answer's JSON
        schema, sent along so that servers with guided decoding answer in it (``validate``
        still decides). An unusable reply gets exactly one corrective follow-up turn; a second
        failure raises :class:`VlmError` with both reasons. Only validated answers are cached,
        so a bad answer is never replayed."""
        key = cache_key(self.model_id, messages, self.params | {"schema": schema})
        cached = self._cache_get(key)
        if cached is not None:
            try:
                return validate(parse_json_reply(cached))
            except VALIDATION_ERRORS as exc:  # the validator got stricter since it was cached
                log.info("cached VLM answer %s no longer validates (%s); asking again", key, exc)

        reply = self._complete(messages, schema)
        try:
            data = parse_json_reply(reply)
            value = validate(data)
        except VALIDATION_ERRORS as first:
            log.info(
                "%s: unusable reply (%s); sending one corrective retry", self.describe(), first
            )
            followup = [*messages, {"role": "assistant", "content": reply}]
            followup.append(corrective_message(str(first)))
            reply = self._complete(followup, schema)
            try:
                data = parse_json_reply(reply)
                value = validate(data)
            except VALIDATION_ERRORS as second:
                raise VlmError(
                    f"{self.describe()} gave no usable answer after one corrective retry: "
                    f"first reply: {_short(first)}; corrected reply: {_short(second)}; "
                    f"corrected reply text: {_short(repr(reply))}"
                ) from second
        self._cache_put(key, json.dumps(data, ensure_ascii=False, sort_keys=True))
        return value

    # The cache is an optimisation: a store that fails must not fail the review.
    def _cache_get(self, key: str) -> str | None:
        if self.cache is None:
            return None
        try:
            data = self.cache.get(_entry(key))
        except OSError as exc:
            log.warning("VLM cache read failed for %s (%s); asking the model", key, exc)
            return None
        if data is not None:
            log.debug("VLM cache hit %s", key)
        return None if data is None else data.decode("utf-8", errors="replace")

    def _cache_put(self, key: str, answer: str) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put(_entry(key), answer.encode("utf-8"))
        except OSError as exc:
            log.warning("VLM cache write failed for %s (%s); answer not cached", key, exc)


def _entry(key: str) -> str:
    """Two-level fan-out keeps directories small when a QC run caches millions of answers."""
    return f"{key[:2]}/{key}.json"
