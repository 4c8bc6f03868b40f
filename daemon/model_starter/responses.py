"""JSON error answers: every error the daemon gives has a machine-readable `error` field."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse
from sanic import json as json_response

from model_starter.protocol import ANSWER_HEADER

__all__ = ["error_response"]


def error_response(
    status: int, error: str, detail: str, *, retry_after: int | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> HTTPResponse:
    out = {ANSWER_HEADER: error, **(headers or {})}
    if retry_after is not None:
        out["Retry-After"] = str(retry_after)
    return json_response({"error": error, "detail": detail, **extra}, status=status, headers=out)
