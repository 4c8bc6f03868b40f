"""JSON error answers: every error the daemon gives has a machine-readable `error` field."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse
from sanic import json as json_response

__all__ = ["ANSWER_HEADER", "error_response"]

# Says which answer this is; the generated nginx config tests it (e.g. `not_replayed`).
ANSWER_HEADER = "X-Model-Starter"


def error_response(
    status: int, error: str, detail: str, *, retry_after: int | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> HTTPResponse:
    out = {ANSWER_HEADER: error, **(headers or {})}
    if retry_after is not None:
        out["Retry-After"] = str(retry_after)
    return json_response({"error": error, "detail": detail, **extra}, status=status, headers=out)
