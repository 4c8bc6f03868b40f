"""The Sanic daemon: the start path nginx falls back to, and the admin API.

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

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic import json as json_response
from sanic.exceptions import SanicException

from model_starter.admin import install_admin
from model_starter.config import Config
from model_starter.events import EventHub
from model_starter.launchers import StartError
from model_starter.metrics import Metrics
from model_starter.notify import notify
from model_starter.openai_errors import install_openai_errors
from model_starter.pool import ModelPool
from model_starter.protocol import (
    ANSWER_HEADER,
    MODE_HEADER,
    MODEL_HEADER,
    SENT_HEADER,
    STATUS_HEADER,
    first_upstream_status,
    request_reached_model,
)
from model_starter.reload import reload_config
from model_starter.responses import error_response
from model_starter.supervisor import Event

__all__ = ["create_app"]

log = logging.getLogger("model_starter.app")

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
NOT_REPLAYABLE = frozenset({"POST", "PATCH"})
# SIGHUPs that arrived before the daemon was ready (recorded by `serve`).
EARLY_RELOAD: list[bool] = []


def v2_not_loaded(upstream_status: str | None) -> bool:
    """nginx's $upstream_status of the first attempt was the V2 server's 404 or 400."""
    return first_upstream_status(upstream_status) in (400, 404)


def create_app(
    config: Config, config_path: str | None = None, name: str = "model_starter"
) -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic(name, configure_logging=False)
    # A held request may wait for a whole start (and an eviction); nothing may cut it first.
    app.config.RESPONSE_TIMEOUT = config.max_hold_timeout + 30
    app.config.REQUEST_TIMEOUT = 60
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 5
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    config_path = config_path or config.source
    pool = ModelPool(config)
    metrics = Metrics(pool)
    hub = EventHub()
    pool.listeners += [metrics.on_event, hub.publish]
    app.ctx.pool = pool

    @app.before_server_start
    async def _open(app: Sanic[Any, Any]) -> None:
        await pool.open()

    @app.after_server_start
    async def _ready(app: Sanic[Any, Any]) -> None:
        _no_inheritable_fds()
        loop = asyncio.get_running_loop()

        def announce() -> None:
            # The handler only records; the reload runs as a task on the loop.
            loop.add_signal_handler(signal.SIGHUP, lambda: app.add_task(_reload_task()))
            notify(f"READY=1\nSTATUS=serving {len(config.models)} model(s)")
            if EARLY_RELOAD:
                EARLY_RELOAD.clear()
                app.add_task(_reload_task())

        # Sanic installs its own signal handlers after these listeners, just before the
        # loop runs forever; a SIGHUP caught in between was lost. Announce once it runs.
        loop.call_soon(announce)

    async def _reload_task() -> None:
        await reload_config(pool, config_path)

    def _on_event(event: Event) -> None:
        if event["event"] == "reloaded":  # a longer startup_timeout needs a longer hold
            app.config.RESPONSE_TIMEOUT = pool.config.max_hold_timeout + 30

    pool.listeners.append(_on_event)

    @app.before_server_stop
    async def _close(app: Sanic[Any, Any]) -> None:
        notify("STOPPING=1\nSTATUS=stopping models")
        hub.publish({"event": "shutdown", "model": "", "time": time.time()})
        await pool.close()

    async def model_route(request: Request, model: str, rest: str = "") -> HTTPResponse:
        name = request.headers.get(MODEL_HEADER) or model
        sup = pool.get(name)
        if sup is None:
            return error_response(404, "unknown_model",
                                  f"no model named {name!r} is configured", model=name)
        mode = request.headers.get(MODE_HEADER, "")
        reached = request_reached_model(request.headers.get(SENT_HEADER))
        if reached and sup.spec.launcher == "v2":
            # The server's own 404/400 means "not loaded": nothing ran, a replay is safe.
            reached = not v2_not_loaded(request.headers.get(STATUS_HEADER))
        if reached and request.method in NOT_REPLAYABLE:
            log.warning("model=%s %s reached the model and failed; not replayed",
                        name, request.method)
            return error_response(
                502, "not_replayed",
                f"the {request.method} request reached model '{name}', which failed or closed "
                "the connection before answering; it is not sent again because it may have "
                "taken effect",
                model=name, log_tail=sup.launcher.tail(20),
            )
        if reached or mode == "retry":
            # nginx failed to get an answer from a model we may think is ready.
            await sup.recheck()
        t0 = time.monotonic()
        try:
            already = await sup.ensure_ready()
            if not already:
                metrics.observe_wait(name, time.monotonic() - t0)
        except StartError as exc:
            return error_response(503, exc.reason, exc.detail, retry_after=exc.retry_after,
                                  model=name, exit_status=exc.exit_status, log_tail=exc.log_tail)
        if mode == "auth":
            return HTTPResponse(status=204, headers={ANSWER_HEADER: "ready"})
        if mode == "retry" or not already:
            return json_response({"model": name, "state": "ready", "retry": True}, status=504,
                                 headers={ANSWER_HEADER: "ready"})
        return HTTPResponse(status=204, headers={ANSWER_HEADER: "ready"})

    app.add_route(model_route, "/<model>", methods=METHODS, name="model_bare")
    app.add_route(model_route, "/<model>/<rest:path>", methods=METHODS, name="model")

    install_admin(app, pool, metrics, hub, config_path)
    install_openai_errors(app)

    @app.exception(Exception)
    async def on_error(request: Request, exc: Exception) -> HTTPResponse:
        if isinstance(exc, SanicException):
            status = exc.status_code
            kind = "not_found" if status == 404 else "bad_request"
            return error_response(status, kind, str(exc))
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(503, "internal_error",
                              "model-starter hit an internal error; see its log", retry_after=5)

    return app


def _no_inheritable_fds() -> None:
    """Sanic leaves its listening socket inheritable (for its worker processes). A model
    or a start command that inherited it would hold the daemon's port after a restart."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
