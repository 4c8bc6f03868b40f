"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

The nginx include writes its own answers on ``/v1/`` with :func:`openai_error`; the daemon
reshapes the JSON errors it gives a request of the OpenAI endpoint (its start path sends the
daemon the original ``/v1/...`` URI) with :func:`install_openai_errors`.
"""

from __future__ import annotations

import json
from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic import json as json_response
from sanic.response import BaseHTTPResponse

from model_starter.protocol import is_openai_path

__all__ = ["install_openai_errors", "openai_error", "reshape"]

# Answers that are not errors for the client: 504 is "ready, replay" on the start path.
_PASS = frozenset({504})


def openai_error(message: str, code: str | None, *, status: int = 400,
                 param: str | None = None, **extra: Any) -> dict[str, Any]:
    """OpenAI's error document; ``type`` follows the status as OpenAI's API does."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


def reshape(status: int, body: Any) -> dict[str, Any] | None:
    """The daemon's ``{"error": kind, "detail": ...}`` as OpenAI's shape (None: leave as is)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None
    kind = body["error"]
    detail = str(body.get("detail") or kind)
    extra = {k: v for k, v in body.items() if k not in ("error", "detail")}
    if kind == "unknown_model":
        kind = "model_not_found"
    return openai_error(detail, kind, status=status,
                        param="model" if kind == "model_not_found" else None, **extra)


def install_openai_errors(app: Sanic[Any, Any]) -> None:
    """Reshape every JSON error the daemon answers to a request of the OpenAI endpoint."""

    async def _openai_shape(request: Request, response: BaseHTTPResponse) -> HTTPResponse | None:
        if (response.status < 400 or response.status in _PASS
                or not is_openai_path(request.path) or not isinstance(response.body, bytes)):
            return None
        try:
            doc = reshape(response.status, json.loads(response.body))
        except ValueError:
            return None
        if doc is None:
            return None
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "content-type")}
        return json_response(doc, status=response.status, headers=headers)

    app.register_middleware(_openai_shape, "response")
