"""The admin API under a prefix no model name can take: status, start, stop, reload, an SSE
event stream and Prometheus metrics. A Sanic blueprint whose handlers read ``request.app.ctx``
behind ONE guard (:func:`guard`, the blueprint's request middleware): loopback only, proxied
calls (nginx sets our headers) are refused with 404, and an optional bearer token guards
everything.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

from sanic import Blueprint, HTTPResponse, Request
from sanic import json as json_response

from model_starter.events import TooManySubscribers
from model_starter.launchers import StartError
from model_starter.launchers.v2 import V2Launcher
from model_starter.metrics import CONTENT_TYPE
from model_starter.protocol import ADMIN_PREFIX, ERROR_UNKNOWN_MODEL
from model_starter.responses import error_response, start_error_response
from model_starter.supervisor import ModelSupervisor, State
from model_starter.wire import (
    SAFE_METHODS,
    came_through_nginx,
    check_host,
    check_intent,
    check_origin,
    loopback,
)

__all__ = ["admin", "guard", "model_status"]

KEEPALIVE_SECONDS = 15.0

admin = Blueprint("admin", url_prefix=ADMIN_PREFIX)


@admin.on_request
async def guard(request: Request) -> HTTPResponse | None:
    """The one guard of every admin route: None lets the request through."""
    if came_through_nginx(request):
        return error_response(404, "not_found", "not found")
    config = request.app.ctx.pool.config
    token = config.admin_token
    if not token:
        if not loopback(request.ip):
            # Listening beyond loopback (a container) exposes nothing without a token.
            return error_response(403, "forbidden", "the admin API answers loopback clients "
                                  "only, unless admin_token is set")
        refusal = check_host(request, config)  # a DNS-rebinding page has its own name
        if refusal is not None:
            return refusal
    else:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return error_response(401, "unauthorized", "a valid bearer token is required",
                                  headers={"WWW-Authenticate": "Bearer"})
    if request.method not in SAFE_METHODS:
        return check_origin(request, config) or check_intent(request)
    return None


@admin.get("/status")
async def status(request: Request) -> HTTPResponse:
    pool = request.app.ctx.pool
    server = pool.inference_server
    models = {name: model_status(sup) for name, sup in pool.models.items()}
    v2 = {name: sup.launcher for name, sup in pool.models.items()
          if isinstance(sup.launcher, V2Launcher)}
    if v2:  # what the V2 server itself says (its repository index)
        states = await next(iter(v2.values())).index_states()
        for name, launcher in v2.items():
            models[name]["server_state"] = states.get(launcher.name)
    return json_response({
        "models": list(models.values()),
        "inference_server": None if server is None else model_status(server),
    })


@admin.post("/models/<name>/<action:start|stop>")
async def control(request: Request, name: str, action: str) -> HTTPResponse:
    sup = request.app.ctx.pool.get(name)
    if sup is None:
        return error_response(404, ERROR_UNKNOWN_MODEL, f"no model named {name!r} is configured",
                              model=name)
    if action == "stop":
        await sup.stop("manual")
        return json_response(model_status(sup))
    try:
        await sup.ensure_ready()
    except StartError as exc:
        return start_error_response(exc, name, admin=True)
    return json_response(model_status(sup))


@admin.post("/reload")
async def reload(request: Request) -> HTTPResponse:
    result = await request.app.ctx.daemon.reloader.reload()
    return json_response(result, status=200 if result["ok"] else 400)


@admin.get("/metrics")
async def prometheus(request: Request) -> HTTPResponse:
    return HTTPResponse(request.app.ctx.metrics.exposition(), content_type=CONTENT_TYPE)


@admin.get("/events")
async def events(request: Request) -> HTTPResponse | None:
    pool, hub = request.app.ctx.pool, request.app.ctx.hub
    try:
        subscription = hub.subscribe(pool.config.max_event_streams)
    except TooManySubscribers as exc:
        return error_response(503, "too_many_streams", f"{exc} (max_event_streams)",
                              retry_after=int(KEEPALIVE_SECONDS))
    with subscription as queue:
        response = await request.respond(
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        for sup in pool.models.values():  # where everything stands, then what changes
            snapshot = {"event": "status", "model": sup.spec.name, "time": time.time(),
                        "state": str(sup.state)}
            await response.send(f"event: status\ndata: {json.dumps(snapshot)}\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.send(": keepalive\n\n")
                continue
            if event["event"] == "shutdown":
                break
            await response.send(f"event: {event['event']}\ndata: {json.dumps(event)}\n\n")
    await response.eof()
    return None


def model_status(sup: ModelSupervisor) -> dict[str, Any]:
    err = sup.last_error
    now = time.monotonic()
    backoff = sup.backoff_until(now)
    return {
        "name": sup.spec.name,
        "state": str(sup.state),
        "since": sup.since,
        "pid": sup.launcher.pid,
        "launcher": sup.launcher.kind,
        "mode": sup.spec.mode,
        "host": sup.spec.host,
        "port": sup.spec.port,
        "held": sup.held,
        "in_flight": sup.in_flight,
        "busy": sup.busy(now),
        "idle_seconds": round(sup.idle_for(now), 3) if sup.state is State.READY else None,
        "last_activity": time.time() - (now - sup.last_activity),
        "starts": sup.starts,
        "failed_starts": sup.failed_starts,
        "crashes": sup.crashes,
        "last_start_seconds": sup.last_start_seconds,
        "stop_reason": sup.stop_reason,
        "backoff_seconds": None if backoff is None else round(backoff - now, 3),
        "pinned": sup.spec.pinned,
        "requires": dict(sup.spec.requires),
        "last_error": None if err is None else err.as_json(sup.spec.name),
        "log_error": sup.launcher.log_error,
    }
