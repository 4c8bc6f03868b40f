"""The start path nginx falls back to: module-level handlers reading ``request.app.ctx``.

Answers on the seed route ``ANY /<model>/<path>``:

==========================  =====================================================
504                         ready now: nginx replays the original request
204                         ready and nothing had to be done (seed / auth_request)
404 (JSON)                  not a configured model
502 (JSON)                  the request had reached the model, which failed; a
                            POST/PATCH is not replayed
503 (JSON, Retry-After)     start failed, timed out, or the daemon shuts down
==========================  =====================================================

With ``X-Model-Starter-Mode: retry`` (set by the generated nginx config) a ready
model always gets 504, also when it was already running; without it the seed's
literal codes apply: 204 when it was running, 504 when it had to be started.
"""

from __future__ import annotations

import logging
import time

from sanic import HTTPResponse, Request
from sanic import json as json_response
from sanic.exceptions import SanicException

from model_starter.fleet import peer_allowed
from model_starter.launchers import StartError
from model_starter.protocol import (
    ANSWER_HEADER,
    ANSWER_READY,
    DAEMON_DOWN_RETRY_AFTER,
    ERROR_NOT_REPLAYED,
    ERROR_UNKNOWN_MODEL,
    MODE_AUTH,
    MODE_HEADER,
    MODE_RETRY,
    MODEL_HEADER,
    REQUEST_ID_HEADER,
    SENT_HEADER,
    STATUS_HEADER,
    STATUS_NOT_REPLAYED,
    STATUS_READY,
    STATUS_REPLAY,
    STATUS_UNAVAILABLE,
    STATUS_UNKNOWN_MODEL,
    first_upstream_status,
    request_reached_model,
)
from model_starter.responses import (
    error_response,
    log_failure,
    new_request_id,
    start_error_response,
)
from model_starter.supervisor import ModelSupervisor
from model_starter.wire import came_through_nginx, check_host, check_intent, check_origin

__all__ = ["METHODS", "model_route", "on_error"]

log = logging.getLogger("model_starter.app")

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
NOT_REPLAYABLE = frozenset({"POST", "PATCH"})


def replay_safe(sup: ModelSupervisor, upstream_status: str | None) -> bool:
    """Is a replay safe although the request reached the upstream? The launcher knows
    (a V2 server's 404/400 on the first attempt means "not loaded": nothing ran)."""
    return sup.launcher.replay_safe(first_upstream_status(upstream_status))


def refuse_web_pages(request: Request) -> HTTPResponse | None:
    """The start path answers nginx (its upstream Host) and direct callers on loopback; a
    direct call (no header of nginx's) must be meant, as an admin call (see ``wire``)."""
    config = request.app.ctx.pool.config
    refusal = check_host(request, config)
    if refusal is None and not came_through_nginx(request):
        refusal = check_origin(request, config) or check_intent(request)
    return refusal


async def model_route(request: Request, model: str, rest: str = "") -> HTTPResponse:
    refusal = refuse_web_pages(request)
    if refusal is not None:
        return refusal
    ctx = request.app.ctx
    if not peer_allowed(ctx.pool.config, request.ip):
        return error_response(403, "forbidden", "this node's start route answers the peers "
                              "in its `allow:` list only")
    name = request.headers.get(MODEL_HEADER) or model
    sup = ctx.pool.get(name)
    if sup is None:
        return error_response(STATUS_UNKNOWN_MODEL, ERROR_UNKNOWN_MODEL,
                              f"no model named {name!r} is configured", model=name)
    mode = request.headers.get(MODE_HEADER, "")
    reached = (request_reached_model(request.headers.get(SENT_HEADER))
               and not replay_safe(sup, request.headers.get(STATUS_HEADER)))
    if reached and request.method in NOT_REPLAYABLE:
        rid = new_request_id()
        log_failure(rid, name, f"{request.method} reached the model, which failed; not replayed",
                    sup.launcher.tail(20))
        return error_response(
            STATUS_NOT_REPLAYED, ERROR_NOT_REPLAYED,
            f"the {request.method} request reached model '{name}', which failed or closed "
            "the connection before answering; it is not sent again because it may have "
            "taken effect",
            model=name, request_id=rid, headers={REQUEST_ID_HEADER: rid},
        )
    if reached or mode == MODE_RETRY:
        # nginx failed to get an answer from a model we may think is ready.
        await sup.recheck()
    t0 = time.monotonic()
    if mode == MODE_AUTH:  # another model's turn is due: this one takes no new work
        await ctx.pool.admission.wait_turn(sup)
    try:
        already = await sup.ensure_ready()
        if not already:
            ctx.metrics.observe_wait(name, time.monotonic() - t0)
    except StartError as exc:
        return start_error_response(exc, name)
    ready: dict[str, str] = {ANSWER_HEADER: ANSWER_READY}
    if mode == MODE_AUTH:
        return HTTPResponse(status=STATUS_READY, headers=ready)
    if mode == MODE_RETRY or not already:
        if already:  # its 502 raced the start: this replay is protected like the released ones
            sup.replay_coming()
        return json_response({"model": name, "state": "ready", "retry": True},
                             status=STATUS_REPLAY, headers=ready)
    return HTTPResponse(status=STATUS_READY, headers=ready)


async def on_error(request: Request, exc: Exception) -> HTTPResponse:
    """Every error is a JSON answer, never a bare 500 or a traceback."""
    if isinstance(exc, SanicException):
        status = exc.status_code
        kind = {404: "not_found", 413: "too_large"}.get(status, "bad_request")
        return error_response(status, kind, str(exc))
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(STATUS_UNAVAILABLE, "internal_error",
                          "model-starter hit an internal error; see its log",
                          retry_after=DAEMON_DOWN_RETRY_AFTER)
