"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, shared by the VLM review,
judge, fault and security tests (its ``server`` and ``make_client`` fixtures are in conftest)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

API_KEY = "sk-test-5ecret-d0-not-leak"
KEY_ENV = "VIVA_TEST_VLM_KEY"
GOOD = {"keep": True, "score": 8, "instruction": "Remove the red ball", "reason": "Clean removal."}


# -- a scripted chat-completions server ----------------------------------------------------------
@dataclass
class Reply:
    """One scripted answer: an assistant ``content`` in a 200 envelope, or a raw status/body."""

    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    delay_s: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


def _protocol_problem(body: Any) -> str | None:
    """Why ``body`` is not a chat-completions request (``None`` if it is one)."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "body must be a JSON object with a model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant"):
            return f"bad role {message.get('role')!r}"
        content = message.get("content")
        parts = [] if isinstance(content, str) else content
        for part in parts:
            if part.get("type") == "image_url":
                if not part["image_url"]["url"].startswith("data:image/png;base64,"):
                    return "images must be PNG data URLs"
            elif part.get("type") != "text" or not isinstance(part.get("text"), str):
                return f"bad content part {part!r}"
    return None


class ChatServer(ThreadingHTTPServer):
    """Speaks enough of ``POST /v1/chat/completions`` to test a client: checks the route, the
    bearer key and the request shape, then plays ``script`` in order (the last reply repeats)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[Reply] = [Reply(json.dumps(GOOD))]
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def next_reply(self) -> Reply:
        with self._lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out has hung up; writing to it fails, which is expected here."""


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args: Any) -> None:
        """Keep the test output clean."""

    def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.server.requests.append(Recorded(self.path, dict(self.headers), body))
        if self.path != "/v1/chat/completions":
            return self._send(404, '{"error": {"message": "no such route"}}')
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {API_KEY}":  # like some servers, echo the credential it rejected
            return self._send(401, json.dumps({"error": {"message": f"bad key {auth}"}}))
        problem = _protocol_problem(body)
        if problem:
            return self._send(400, json.dumps({"error": {"message": problem}}))
        reply = self.server.next_reply()
        time.sleep(reply.delay_s)
        if reply.body is None:
            envelope = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": reply.content},
                    }
                ],
            }
            return self._send(reply.status, json.dumps(envelope), reply.headers)
        return self._send(reply.status, reply.body, reply.headers)


def clip(seed: int, frames: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8)
