"""The daemon's lifecycle, as one object: startup, the running loop, shutdown.

``serve`` creates the :class:`Daemon` before Sanic runs and points SIGHUP at
:meth:`Daemon.record_reload` at once: a reload asked for before the daemon is ready must not
kill it (SIGHUP's default action), so it is recorded and carried out once the loop runs.
(A handler, not SIG_IGN: an ignored signal would be inherited by every model we start.)

Sanic calls :meth:`startup` before it serves, :meth:`started` once it listens (which runs
:meth:`main_loop` on the loop's first turn) and :meth:`shutdown` when it stops (see
``app.create_app``). Signal handlers only record or schedule; the work runs as tasks on the
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from model_starter.config import Config
from model_starter.events import EventHub, Shutdown
from model_starter.metrics import Metrics
from model_starter.notify import notify
from model_starter.pool import ModelPool
from model_starter.reload import Reloader

__all__ = ["Daemon"]

log = logging.getLogger("model_starter.daemon")


class Daemon:
    """The pool of models plus what serves it: metrics, the event hub, the reloader."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.pool = ModelPool(config)
        self.metrics = Metrics(self.pool)
        self.hub = EventHub()
        self.reloader = Reloader(self.pool, config_path or config.source)
        self.pool.listeners += [self.metrics.on_event, self.hub.publish]
        self.reload_requested = False  # a SIGHUP came before the loop could take it
        self.running = False
        self._serving: Callable[[], bool] = lambda: True
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def config(self) -> Config:
        return self.pool.config

    # -- signal handlers: they only record or schedule --------------------------------------

    def record_reload(self, *_: object) -> None:
        """SIGHUP before the loop runs (installed with `signal.signal` by `serve`)."""
        self.reload_requested = True

    def request_reload(self) -> None:
        """SIGHUP once running (a loop signal handler): schedule a reload on the loop."""
        self._spawn(self.reloader.reload())

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        """Before serving: adopt running models, start the pool's background work."""
        await self.pool.open()

    def started(self, serving: Callable[[], bool] = lambda: True) -> None:
        """The server listens: close inherited fds, then announce once the loop runs.

        Sanic runs this listener inside ``run_until_complete``, then calls ``run_forever``;
        in between, uvloop does not deliver signals to the loop's handlers: a SIGHUP caught
        there was lost. So SIGHUP moves onto the loop, and READY is said, only once
        `serving()` (Sanic sets it between the two runs): from ``run_forever``
        (:meth:`main_loop`). Until then SIGHUP is recorded."""
        _no_inheritable_fds()
        self._serving = serving
        asyncio.get_running_loop().call_soon(self.main_loop)

    def main_loop(self) -> None:
        """The loop runs: take SIGHUP on it, say READY, carry out a reload asked for early."""
        loop = asyncio.get_running_loop()
        if not self._serving():  # still the start-up run: wait for run_forever
            loop.call_soon(self.main_loop)
            return
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.running = True
        notify(f"READY=1\nSTATUS=serving {len(self.config.models)} model(s)")
        if self.reload_requested:
            self.reload_requested = False
            self.request_reload()

    async def shutdown(self) -> None:
        """Say STOPPING, end the event streams, drop pending reloads, stop every model."""
        self.running = False
        # A SIGHUP while the models stop is recorded, neither a reload nor fatal.
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, self.record_reload)
        notify("STOPPING=1\nSTATUS=stopping models")
        self.hub.publish(Shutdown())
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pool.close()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reload failed", exc_info=task.exception())


def _no_inheritable_fds() -> None:
    """Sanic leaves its listening socket inheritable (for its worker processes). A model
    or a start command that inherited it would hold the daemon's port after a restart."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
