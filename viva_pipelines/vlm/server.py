"""An OpenAI-compatible chat-completions server for a local VLM (``viva vlm-serve``).

What a vLLM deployment offers the QC review and the benchmark judge, for a model on this
machine: ``POST /v1/chat/completions`` (text and base64 image parts, ``response_format`` of
type ``json_schema`` decoded into the schema, ``json_object`` or none as free text) and
``GET /v1/models``, behind an optional bearer key. The rehearsal serves its tiny LLaVA with
it, so the graph talks to its VLM over the real protocol. One answer at a time (the backend
holds a lock); greedy decoding, so the same request gets the same answer.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from viva_pipelines.vlm.base import VlmBackend, VlmError

log = logging.getLogger(__name__)

#: Largest request body accepted (images arrive inline, as base64).
MAX_BODY_BYTES = 64 * 1024 * 1024
ROLES = ("system", "user", "assistant")


def request_problem(body: Any) -> str | None:
    """Why ``body`` is not a chat-completions request this server answers (``None``: it is)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"messages[{index}]: role must be one of {', '.join(ROLES)}"
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list) or not all(
            isinstance(p, dict) and p.get("type") in ("text", "image_url") for p in parts
        ):
            return f"messages[{index}]: content must be text or a list of text/image_url parts"
        for part in parts:
            url = (
                (part.get("image_url") or {}).get("url", "") if part["type"] == "image_url" else ""
            )
            if part["type"] == "image_url" and not str(url).startswith("data:image/"):
                return f"messages[{index}]: images must be base64 data: URLs (no fetching)"
    answer_format = body.get("response_format") or {"type": "text"}
    kind = answer_format.get("type") if isinstance(answer_format, dict) else None
    if kind == "json_schema":
        schema = (answer_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            return "response_format.json_schema.schema must be a JSON schema object"
    elif kind not in ("text", "json_object"):
        return f"response_format type {kind!r} is not supported (json_schema, json_object, text)"
    return None


def answer_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    answer_format = body.get("response_format") or {}
    if answer_format.get("type") == "json_schema":
        return answer_format["json_schema"]["schema"]
    return None


def completion(model: str, content: str) -> dict[str, Any]:
    """The chat-completions response envelope around one answer."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }


def make_server(
    backend: VlmBackend, host: str, port: int, *, api_key: str | None = None
) -> ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) answering with ``backend`` as the
    model ``backend.model_id``; with ``api_key``, requests must carry it as a bearer token."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, document: dict[str, Any]) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "code": status}})

        def _accepted(self, route: str) -> bool:
            """The request carries the key (if one is required) and asks for ``route``;
            otherwise the refusal is sent."""
            given = self.headers.get("Authorization", "")
            if api_key is not None and not hmac.compare_digest(
                given.encode(), f"Bearer {api_key}".encode()
            ):
                self._error(401, "missing or wrong API key")
                return False
            if self.path.rstrip("/") != route:
                self._error(404, f"no route {self.path}")
                return False
            return True

        def do_GET(self) -> None:
            if self._accepted("/v1/models"):
                self._send(200, {"object": "list", "data": [{"id": backend.model_id}]})

        def do_POST(self) -> None:
            if not self._accepted("/v1/chat/completions"):
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._error(413, f"request body over {MAX_BODY_BYTES} bytes")
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (ValueError, UnicodeDecodeError):
                self._error(400, "the body is not JSON")
                return
            if problem := request_problem(body):
                self._error(400, problem)
                return
            try:
                content = backend.complete(body["messages"], answer_schema(body))
            except VlmError as exc:
                self._error(500, str(exc))
                return
            self._send(200, completion(backend.model_id, content))

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)
