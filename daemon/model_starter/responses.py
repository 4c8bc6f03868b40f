"""JSON error answers: every error the daemon gives has a machine-readable `error` field."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse
from sanic import json as json_response

from model_starter.launchers import StartError
from model_starter.protocol import ANSWER_HEADER, STATUS_UNAVAILABLE

__all__ = ["error_response", "start_error_response"]


def error_response(
    status: int, error: str, detail: str, *, retry_after: int | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> HTTPResponse:
    out = {ANSWER_HEADER: error, **(headers or {})}
    if retry_after is not None:
        out["Retry-After"] = str(retry_after)
    return json_response({"error": error, "detail": detail, **extra}, status=status, headers=out)


def start_error_response(exc: StartError, model: str) -> HTTPResponse:
    """503: the model could not be made ready (the start path and the admin start agree)."""
    return error_response(STATUS_UNAVAILABLE, exc.reason, exc.detail,
                          retry_after=exc.retry_after, model=model,
                          exit_status=exc.exit_status, log_tail=exc.log_tail)
