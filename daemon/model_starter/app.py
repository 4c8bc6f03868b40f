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

import contextlib
import logging
import os
import re
import time
from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic import json as json_response
from sanic.exceptions import SanicException

from model_starter.config import ADMIN_PREFIX, Config
from model_starter.launchers import StartError
from model_starter.notify import notify
from model_starter.pool import ModelPool
from model_starter.supervisor import ModelSupervisor, State

__all__ = [
    "MODEL_HEADER",
    "MODE_HEADER",
    "SENT_HEADER",
    "VIA_HEADER",
    "create_app",
]

log = logging.getLogger("model_starter.app")

MODEL_HEADER = "X-Model-Starter-Model"
MODE_HEADER = "X-Model-Starter-Mode"
SENT_HEADER = "X-Model-Starter-Upstream-Sent"
STATUS_HEADER = "X-Model-Starter-Upstream-Status"
VIA_HEADER = "X-Model-Starter-Via"
ANSWER_HEADER = "X-Model-Starter"
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
NOT_REPLAYABLE = frozenset({"POST", "PATCH"})
_NUMBER = re.compile(r"\d+")


def request_reached_model(header: str | None) -> bool:
    """nginx's $upstream_bytes_sent: 0 means the connection was refused (nothing ran)."""
    return header is not None and any(int(n) > 0 for n in _NUMBER.findall(header))


def v2_not_loaded(upstream_status: str | None) -> bool:
    """nginx's $upstream_status of the first attempt was the V2 server's 404 or 400."""
    first = _NUMBER.search(upstream_status or "")
    return first is not None and first.group() in ("400", "404")


def _error(status: int, error: str, detail: str, **extra: Any) -> HTTPResponse:
    headers = {ANSWER_HEADER: error}
    retry_after = extra.pop("retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return json_response({"error": error, "detail": detail, **extra}, status=status,
                         headers=headers)


def _from_nginx(request: Request) -> bool:
    return VIA_HEADER in request.headers or MODEL_HEADER in request.headers


def create_app(config: Config, name: str = "model_starter") -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic(name, configure_logging=False)
    # A held request may wait for a whole start (and an eviction); nothing may cut it first.
    app.config.RESPONSE_TIMEOUT = config.max_hold_timeout + 30
    app.config.REQUEST_TIMEOUT = 60
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 5
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    pool = ModelPool(config)
    app.ctx.pool = pool

    @app.before_server_start
    async def _open(app: Sanic[Any, Any]) -> None:
        await pool.open()

    @app.after_server_start
    async def _ready(app: Sanic[Any, Any]) -> None:
        _no_inheritable_fds()
        notify(f"READY=1\nSTATUS=serving {len(config.models)} model(s)")

    @app.before_server_stop
    async def _close(app: Sanic[Any, Any]) -> None:
        notify("STOPPING=1\nSTATUS=stopping models")
        await pool.close()

    async def model_route(request: Request, model: str, rest: str = "") -> HTTPResponse:
        name = request.headers.get(MODEL_HEADER) or model
        sup = pool.get(name)
        if sup is None:
            return _error(404, "unknown_model", f"no model named {name!r} is configured",
                          model=name)
        mode = request.headers.get(MODE_HEADER, "")
        reached = request_reached_model(request.headers.get(SENT_HEADER))
        if reached and sup.spec.launcher == "v2":
            # The server's own 404/400 means "not loaded": nothing ran, a replay is safe.
            reached = not v2_not_loaded(request.headers.get(STATUS_HEADER))
        if reached and request.method in NOT_REPLAYABLE:
            log.warning("model=%s %s reached the model and failed; not replayed",
                        name, request.method)
            return _error(
                502, "not_replayed",
                f"the {request.method} request reached model '{name}', which failed or closed "
                "the connection before answering; it is not sent again because it may have "
                "taken effect",
                model=name, log_tail=sup.launcher.tail(20),
            )
        if reached:
            await sup.recheck()
        try:
            already = await sup.ensure_ready()
        except StartError as exc:
            return _error(503, exc.reason, exc.detail, retry_after=exc.retry_after,
                          model=name, exit_status=exc.exit_status, log_tail=exc.log_tail)
        if mode == "auth":
            return HTTPResponse(status=204, headers={ANSWER_HEADER: "ready"})
        if mode == "retry" or not already:
            return json_response({"model": name, "state": "ready", "retry": True}, status=504,
                                 headers={ANSWER_HEADER: "ready"})
        return HTTPResponse(status=204, headers={ANSWER_HEADER: "ready"})

    app.add_route(model_route, "/<model>", methods=METHODS, name="model_bare")
    app.add_route(model_route, "/<model>/<rest:path>", methods=METHODS, name="model")

    def admin_guard(request: Request) -> HTTPResponse | None:
        if _from_nginx(request):
            return _error(404, "not_found", "not found")
        return None

    @app.get(f"{ADMIN_PREFIX}/status")
    async def status(request: Request) -> HTTPResponse:
        return admin_guard(request) or json_response(
            {"models": [_status(sup) for sup in pool.models.values()]}
        )

    @app.post(f"{ADMIN_PREFIX}/models/<name>/<action:start|stop>")
    async def control(request: Request, name: str, action: str) -> HTTPResponse:
        if (denied := admin_guard(request)) is not None:
            return denied
        sup = pool.get(name)
        if sup is None:
            return _error(404, "unknown_model", f"no model named {name!r} is configured",
                          model=name)
        if action == "stop":
            await sup.stop("manual")
            return json_response(_status(sup))
        try:
            await sup.ensure_ready()
        except StartError as exc:
            return _error(503, exc.reason, exc.detail, retry_after=exc.retry_after,
                          model=name, exit_status=exc.exit_status, log_tail=exc.log_tail)
        return json_response(_status(sup))

    @app.exception(Exception)
    async def on_error(request: Request, exc: Exception) -> HTTPResponse:
        if isinstance(exc, SanicException):
            status = exc.status_code
            return _error(status, "not_found" if status == 404 else "bad_request", str(exc))
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(503, "internal_error", "model-starter hit an internal error; see its log",
                      retry_after=5)

    return app


def _no_inheritable_fds() -> None:
    """Sanic leaves its listening socket inheritable (for its worker processes). A model
    or a start command that inherited it would hold the daemon's port after a restart."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _status(sup: ModelSupervisor) -> dict[str, Any]:
    err = sup.last_error
    now = time.monotonic()
    backoff = sup.backoff_until(now)
    return {
        "name": sup.spec.name,
        "state": str(sup.state),
        "since": sup.since,
        "pid": sup.launcher.pid,
        "launcher": sup.launcher.kind,
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
        "stop_reason": sup.stop_reason,
        "backoff_seconds": None if backoff is None else round(backoff - now, 3),
        "pinned": sup.spec.pinned,
        "requires": dict(sup.spec.requires),
        "last_start_seconds": sup.last_start_seconds,
        "last_error": None if err is None else err.as_json(sup.spec.name),
    }
