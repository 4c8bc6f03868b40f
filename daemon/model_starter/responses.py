"""JSON error answers: every error the daemon gives has a machine-readable `error` field."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sanic import HTTPResponse
from sanic import json as json_response

from model_starter.launchers import StartError
from model_starter.protocol import ANSWER_HEADER, REQUEST_ID_HEADER, STATUS_UNAVAILABLE

__all__ = ["error_response", "log_failure", "new_request_id", "start_error_response"]

log = logging.getLogger("model_starter.app")


def error_response(
    status: int, error: str, detail: str, *, retry_after: int | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> HTTPResponse:
    out = {ANSWER_HEADER: error, **(headers or {})}
    if retry_after is not None:
        out["Retry-After"] = str(retry_after)
    return json_response({"error": error, "detail": detail, **extra}, status=status, headers=out)


def new_request_id() -> str:
    return secrets.token_hex(8)


def start_error_response(exc: StartError, model: str, *, admin: bool = False) -> HTTPResponse:
    """503: the model could not be made ready (the start path and the admin start agree).

    The model's log lines may hold secrets (argv, prompts): only the admin API gets them.
    A client gets the reason and a request id; the daemon's log has the tail under that id."""
    if admin:
        return error_response(STATUS_UNAVAILABLE, exc.reason, exc.detail,
                              retry_after=exc.retry_after, model=model,
                              exit_status=exc.exit_status, log_tail=exc.log_tail)
    rid = new_request_id()
    log_failure(rid, model, exc.reason, exc.log_tail)
    return error_response(STATUS_UNAVAILABLE, exc.reason, exc.detail,
                          retry_after=exc.retry_after, model=model, request_id=rid,
                          exit_status=exc.exit_status, headers={REQUEST_ID_HEADER: rid})


def log_failure(rid: str, model: str, reason: str, tail: list[str]) -> None:
    log.warning("request %s: model=%s %s; its log ends:%s", rid, model, reason,
                "".join(f"\n    | {line}" for line in tail) or " (empty)")
