"""A client for any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, Azure, vLLM,
SGLang, Ollama, LiteLLM, …), hardened for batch use by the dataset QC step and the judges.

A QC run sends thousands of requests; the endpoint will throttle, hiccup and occasionally be
down. So: bounded retries with exponential backoff and jitter for what is worth retrying (429,
5xx, connection errors, timeouts) honouring the server's ``Retry-After``; immediate failure for
what is not (other 4xx — a bad key or request will not fix itself); a client-side token bucket
so many workers stay under the provider's rate limit instead of discovering it through 429s.
The API key is read from an environment variable named in conf, sent only in the
``Authorization`` header, and scrubbed from every error message and log line.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import requests

from viva_pipelines.vlm.base import VlmBackend, VlmError
from viva_pipelines.vlm.cache import ByteStore, StorageLike
from viva_pipelines.vlm.messages import Message

log = logging.getLogger(__name__)

_RETRYABLE_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_BODY_SNIPPET_CHARS = 300


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: ``max_attempts`` requests in all; before attempt ``n + 1`` wait
    ``backoff_s * 2**(n-1)`` scaled by a random factor in ``[1 - jitter, 1]`` (so workers that
    failed together do not retry together), at least the server's ``Retry-After``, and never
    more than ``max_backoff_s`` (which bounds the worst-case wait of a call)."""

    max_attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        backoff *= 1 - self.jitter * random.random()
        return min(self.max_backoff_s, max(backoff, retry_after or 0.0))


class RateLimiter:
    """A thread-safe token bucket: on average at most ``rate_per_s`` acquisitions per second,
    with bursts of up to ``burst``. Each caller reserves its slot under the lock and sleeps
    outside it, so waiting threads queue fairly without holding the lock."""

    def __init__(self, rate_per_s: float, burst: int = 1) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now
            self._tokens -= 1
            wait = -self._tokens / self.rate_per_s if self._tokens < 0 else 0.0
        if wait:
            time.sleep(wait)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms`` (OpenAI, Azure) or the standard
    ``Retry-After`` as delay-seconds or an HTTP date; ``None`` when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def read_api_key(name: str | None) -> str | None:
    """The API key in environment variable ``name`` (``None`` for none); a variable that is
    unset or empty raises :class:`VlmError` naming it. Keys never live in configuration."""
    if name is None:
        return None
    key = os.environ.get(name, "").strip()
    if not key:
        raise VlmError(f"environment variable {name} (the VLM API key) is not set or empty")
    return key


class ChatCompletionsClient(VlmBackend):
    """``POST {base_url}/chat/completions`` with retries, rate limiting and an answer cache.

    ``api_key_env`` names the environment variable holding the key (``None`` for endpoints
    without auth, e.g. a local vLLM); the key is read once, here, so a missing key fails at
    start-up rather than after the first shard. ``json_mode`` sends the answer's JSON schema as
    ``response_format={"type": "json_schema", ...}`` (vLLM and OpenAI then decode into it), or
    ``{"type": "json_object"}`` when the caller has none; turn it off for servers that reject
    ``response_format``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        json_mode: bool = True,
        retry: RetryPolicy | None = None,
        rate_limit_per_s: float | None = None,
        rate_limit_burst: int = 1,
        cache: ByteStore | StorageLike | str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(cache=cache)
        self.base_url = base_url.rstrip("/")
        self.endpoint = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = read_api_key(api_key_env)
        self.timeout = (connect_timeout_s, timeout_s)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(rate_limit_per_s, rate_limit_burst) if rate_limit_per_s else None
        # requests.Session is not guaranteed thread-safe; QC workers each get their own.
        self._local = threading.local()

    def __repr__(self) -> str:
        return (
            f"ChatCompletionsClient(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def params(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "json_mode": self.json_mode,
        }

    def describe(self) -> str:
        return f"model {self.model} at {self.endpoint}"

    def _redact(self, text: str) -> str:
        """Servers sometimes echo the credential they rejected; it must not reach logs."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _complete(self, messages: Sequence[Message], schema: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.json_mode and schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.get("title", "answer"), "schema": schema},
            }
        elif self.json_mode:
            body["response_format"] = {"type": "json_object"}
        reply = self._post(body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise VlmError(
                f"{self.endpoint} answered without choices[0].message.content ({exc!r})"
            ) from exc
        # A null content (a refusal, a filtered answer) is an unusable reply, not a transport
        # failure: it gets the corrective retry like any other.
        return content if isinstance(content, str) else ""

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self.retry.max_attempts
        last = "no attempt made"
        for attempt in range(1, attempts + 1):
            if self.limiter:
                self.limiter.acquire()
            retry_after = None
            try:
                response = self._session().post(
                    self.endpoint, json=body, headers=headers, timeout=self.timeout
                )
            except _RETRYABLE_EXCEPTIONS as exc:
                last = self._redact(f"{type(exc).__name__}: {exc}")
            else:
                if response.ok:
                    return self._decode(response)
                last = self._redact(
                    f"HTTP {response.status_code} {response.reason}: "
                    f"{response.text[:_BODY_SNIPPET_CHARS]}"
                )
                if response.status_code != 429 and response.status_code < 500:
                    raise VlmError(f"POST {self.endpoint} was rejected (not retried): {last}")
                retry_after = parse_retry_after(response.headers)
            if attempt == attempts:
                break
            delay = self.retry.delay(attempt, retry_after)
            log.warning(
                "POST %s failed (%s); attempt %d/%d, retrying in %.2fs",
                self.endpoint,
                last,
                attempt,
                attempts,
                delay,
            )
            time.sleep(delay)
        raise VlmError(f"POST {self.endpoint} failed after {attempts} attempt(s); last: {last}")

    def _decode(self, response: requests.Response) -> dict[str, Any]:
        try:
            reply = response.json()
        except ValueError as exc:
            raise VlmError(
                f"{self.endpoint} answered HTTP {response.status_code} with a body that is not "
                f"JSON: {self._redact(response.text[:_BODY_SNIPPET_CHARS])}"
            ) from exc
        if not isinstance(reply, dict):
            raise VlmError(f"{self.endpoint} answered with a JSON {type(reply).__name__}")
        return reply
