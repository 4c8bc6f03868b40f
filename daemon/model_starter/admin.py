"""The admin API under a prefix no model name can take: status, start, stop, reload, an SSE
event stream and Prometheus metrics. A Sanic blueprint whose handlers read ``request.app.ctx``
behind ONE guard (:func:`guard`, the blueprint's request middleware): proxied calls (nginx
sets our headers) are refused with 404; without a token, loopback peers with a loopback (or
configured) `Host` only, with it the bearer token; a call that changes state must be meant
(``wire``: no foreign `Origin`, our client header or a JSON body).
"""

from __future__ import annotations

import asyncio
import hmac
import json

from sanic import Blueprint, HTTPResponse, Request
from sanic import json as json_response

from model_starter.dashboard import install_dashboard, public_asset
from model_starter.events import Shutdown, Status, StopReason, TooManySubscribers
from model_starter.launchers import StartError
from model_starter.logs_api import install_logs
from model_starter.metrics import CONTENT_TYPE
from model_starter.protocol import ADMIN_PREFIX, ERROR_UNKNOWN_MODEL
from model_starter.responses import error_response, start_error_response
from model_starter.wire import (
    SAFE_METHODS,
    came_through_nginx,
    check_host,
    check_intent,
    check_origin,
    loopback,
)

__all__ = ["admin", "guard"]

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
            if public_asset(request.path):  # the page's files hold no data; it asks for it
                return None
            return error_response(401, "unauthorized", "a valid bearer token is required",
                                  headers={"WWW-Authenticate": "Bearer"})
    if request.method not in SAFE_METHODS:
        return check_origin(request, config) or check_intent(request)
    return None


@admin.get("/status")
async def status(request: Request) -> HTTPResponse:
    pool = request.app.ctx.pool
    server = pool.inference_server
    sups = list(pool.models.values())
    # What the inference server itself says about each model (V2: its repository index).
    states = await asyncio.gather(*(sup.launcher.server_state() for sup in sups))
    return json_response({
        "models": [{**sup.snapshot(), "server_state": state,
                    "activity": pool.activity_rule(sup)}
                   for sup, state in zip(sups, states, strict=True)],
        "inference_server": None if server is None else server.snapshot(),
    })


@admin.post("/models/<name>/<action:start|stop>")
async def control(request: Request, name: str, action: str) -> HTTPResponse:
    sup = request.app.ctx.pool.get(name)
    if sup is None:
        return error_response(404, ERROR_UNKNOWN_MODEL, f"no model named {name!r} is configured",
                              model=name)
    if action == "stop":
        await sup.stop(StopReason.MANUAL)
        return json_response(sup.snapshot())
    try:
        await sup.ensure_ready(replay=False)
    except StartError as exc:
        return start_error_response(exc, name, admin=True)
    return json_response(sup.snapshot())


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
        return error_response(429, "too_many_streams", f"{exc} (max_event_streams)",
                              retry_after=int(KEEPALIVE_SECONDS))
    with subscription as queue:
        response = await request.respond(
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        for sup in pool.models.values():  # where everything stands, then what changes
            snapshot = Status(model=sup.spec.name, state=sup.state)
            await response.send(f"event: {snapshot.kind}\ndata: {json.dumps(snapshot.as_json())}\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.send(": keepalive\n\n")
                continue
            if isinstance(event, Shutdown):
                break
            await response.send(f"event: {event.kind}\ndata: {json.dumps(event.as_json())}\n\n")
    await response.eof()
    return None


install_logs(admin)  # behind the same guard: the model logs and the dashboard
install_dashboard(admin)
