"""The admin API under a prefix no model name can take: status, start, stop, reload, an SSE
event stream and Prometheus metrics. Loopback only: proxied calls (nginx sets our headers)
are refused with 404, and an optional bearer token guards everything.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic import json as json_response

from model_starter.events import EventHub, Shutdown, Status, StopReason
from model_starter.launchers import StartError
from model_starter.metrics import CONTENT_TYPE, Metrics
from model_starter.pool import ModelPool
from model_starter.protocol import ADMIN_PREFIX, PROXIED_HEADERS
from model_starter.reload import reload_config
from model_starter.responses import error_response

__all__ = ["install_admin"]

KEEPALIVE_SECONDS = 15.0


def install_admin(
    app: Sanic[Any, Any], pool: ModelPool, metrics: Metrics, hub: EventHub, config_path: str
) -> None:
    def denied(request: Request) -> HTTPResponse | None:
        if any(h in request.headers for h in PROXIED_HEADERS):
            return error_response(404, "not_found", "not found")
        token = pool.config.admin_token
        if not token and not _loopback(request.ip):
            # Listening beyond loopback (a container) exposes nothing without a token.
            return error_response(403, "forbidden", "the admin API answers loopback clients "
                                  "only, unless admin_token is set")
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error_response(401, "unauthorized", "a valid bearer token is required",
                                      headers={"WWW-Authenticate": "Bearer"})
        return None

    @app.get(f"{ADMIN_PREFIX}/status")
    async def status(request: Request) -> HTTPResponse:
        if (no := denied(request)) is not None:
            return no
        server = pool.inference_server
        sups = list(pool.models.values())
        # What the inference server itself says about each model (V2: its repository index).
        states = await asyncio.gather(*(sup.launcher.server_state() for sup in sups))
        return json_response({
            "models": [{**sup.snapshot(), "server_state": state}
                       for sup, state in zip(sups, states, strict=True)],
            "inference_server": None if server is None else server.snapshot(),
        })

    @app.post(f"{ADMIN_PREFIX}/models/<name>/<action:start|stop>")
    async def control(request: Request, name: str, action: str) -> HTTPResponse:
        if (no := denied(request)) is not None:
            return no
        sup = pool.get(name)
        if sup is None:
            return error_response(404, "unknown_model", f"no model named {name!r} is configured",
                                  model=name)
        if action == "stop":
            await sup.stop(StopReason.MANUAL)
            return json_response(sup.snapshot())
        try:
            await sup.ensure_ready()
        except StartError as exc:
            return error_response(503, exc.reason, exc.detail, retry_after=exc.retry_after,
                                  model=name, exit_status=exc.exit_status, log_tail=exc.log_tail)
        return json_response(sup.snapshot())

    @app.post(f"{ADMIN_PREFIX}/reload")
    async def reload(request: Request) -> HTTPResponse:
        if (no := denied(request)) is not None:
            return no
        result = await reload_config(pool, config_path)
        return json_response(result, status=200 if result["ok"] else 400)

    @app.get(f"{ADMIN_PREFIX}/metrics")
    async def prometheus(request: Request) -> HTTPResponse:
        if (no := denied(request)) is not None:
            return no
        return HTTPResponse(metrics.exposition(), content_type=CONTENT_TYPE)

    @app.get(f"{ADMIN_PREFIX}/events")
    async def events(request: Request) -> HTTPResponse | None:
        if (no := denied(request)) is not None:
            return no
        response = await request.respond(
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        with hub.subscribe() as queue:
            for sup in pool.models.values():  # where everything stands, then what changes
                snapshot = Status(model=sup.spec.name, state=sup.state)
                await response.send(f"event: {snapshot.kind}\n"
                                    f"data: {json.dumps(snapshot.as_json())}\n\n")
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


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return ip == ""  # a unix socket has no peer address
