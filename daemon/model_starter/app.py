"""The Sanic application: the daemon's lifecycle, the start path and the admin API wired up.

``create_app`` only assembles: the :class:`~model_starter.daemon.Daemon` owns startup,
signals and shutdown; ``routes`` holds the start path, ``admin`` the admin blueprint. Every
handler finds what it needs on ``request.app.ctx``: ``daemon``, ``pool``, ``metrics``, ``hub``.
"""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from model_starter.admin import admin
from model_starter.config import Config
from model_starter.daemon import Daemon
from model_starter.events import Event, Reloaded
from model_starter.openai_errors import install_openai_errors
from model_starter.protocol import HOLD_MARGIN_SECONDS, MAX_REQUEST_BYTES
from model_starter.routes import METHODS, model_route, on_error

__all__ = ["create_app"]


def create_app(
    config: Config, config_path: str | None = None, name: str = "model_starter",
    daemon: Daemon | None = None,
) -> Sanic[Any, Any]:
    """The Sanic app serving `daemon` (made from `config` when not given)."""
    daemon = daemon or Daemon(config, config_path)
    app: Sanic[Any, Any] = Sanic(name, configure_logging=False)
    # A held request may wait for a whole start (and an eviction); nothing may cut it first.
    app.config.RESPONSE_TIMEOUT = config.max_hold_timeout + HOLD_MARGIN_SECONDS
    app.config.REQUEST_TIMEOUT = 60
    # nginx never sends the daemon a body; admin calls carry a small JSON one at most.
    app.config.REQUEST_MAX_SIZE = MAX_REQUEST_BYTES
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 5
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.ctx.daemon = daemon
    app.ctx.pool = daemon.pool
    app.ctx.metrics = daemon.metrics
    app.ctx.hub = daemon.hub

    def hold_timeout(event: Event) -> None:
        if isinstance(event, Reloaded):  # a longer startup_timeout needs a longer hold
            app.config.RESPONSE_TIMEOUT = daemon.config.max_hold_timeout + HOLD_MARGIN_SECONDS

    daemon.pool.listeners.append(hold_timeout)

    async def startup(app: Sanic[Any, Any]) -> None:
        await daemon.startup()

    async def started(app: Sanic[Any, Any]) -> None:
        daemon.started(lambda: app.state.is_running)

    async def shutdown(app: Sanic[Any, Any]) -> None:
        await daemon.shutdown()

    app.register_listener(startup, "before_server_start")
    app.register_listener(started, "after_server_start")
    app.register_listener(shutdown, "before_server_stop")
    app.blueprint(admin)
    app.add_route(model_route, "/<model>", methods=METHODS, name="model_bare")
    app.add_route(model_route, "/<model>/<rest:path>", methods=METHODS, name="model")
    install_openai_errors(app)
    app.exception(Exception)(on_error)
    return app
