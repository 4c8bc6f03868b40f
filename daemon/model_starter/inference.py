"""The inference server the daemon runs for its V2 models (when `inference_server.command`
is set): started once for all of them (single flight), watched for its exit (its models go
down with it), adopted from an earlier daemon, stopped at shutdown. It is no model: no
idle stop, no capacity, no events of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from model_starter.events import FailureReason, State
from model_starter.health import TAIL_LINES, Health, start_until_healthy
from model_starter.launchers.base import Launcher, StartError

__all__ = ["InferenceServerProcess"]

log = logging.getLogger("model_starter.inference")

NAME = "_inference"  # its log file is _inference.log; no model name can start with "_"


class InferenceServerProcess:
    def __init__(
        self, host: str, port: int, health_path: str, startup_timeout: float,
        launcher: Launcher, health: Health, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.port, self.health_path = host, port, health_path
        self.startup_timeout = startup_timeout
        self.launcher = launcher
        self._health = health
        self._clock = clock
        self._starting: asyncio.Task[None] | None = None
        self.since = time.time()
        self.starts = 0
        self.crashes = 0
        self.last_start_seconds: float | None = None
        self.last_error: StartError | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        exited = self.launcher.exited
        return exited is not None and not exited.done()

    @property
    def exited(self) -> asyncio.Future[int] | None:
        """Resolves when the server process ends: every V2 model on it is down then."""
        return self.launcher.exited

    @property
    def state(self) -> State:
        if self.running:
            return State.READY
        return State.STARTING if self._starting is not None else State.STOPPED

    async def ensure_up(self) -> None:
        """Return once the server runs and is healthy; concurrent callers share one start."""
        if self.running and self._starting is None:
            return
        if self._closed:
            raise StartError(FailureReason.SHUTTING_DOWN, "model-starter is shutting down")
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
            self._starting.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        t0 = self._clock()
        self.starts += 1
        try:
            await start_until_healthy(
                self.launcher, self._health, "the inference server", self.host, self.port,
                self.health_path, self.startup_timeout, t0 + self.startup_timeout)
        except StartError as exc:
            self.last_error = exc
            if exc.reason is not FailureReason.EXITED:
                await asyncio.shield(self.launcher.stop())
            log.error("inference server start failed: %s", exc.detail)
            raise
        except BaseException:
            await asyncio.shield(self.launcher.stop())
            raise
        finally:
            self._starting = None
        self._up(t0)

    def _up(self, t0: float | None) -> None:
        self.since = time.time()
        self.last_error = None
        if t0 is not None:
            self.last_start_seconds = self._clock() - t0
        log.info("inference server ready pid=%s", self.launcher.pid)
        exited = self.launcher.exited
        if exited is not None:
            exited.add_done_callback(self._gone)

    def _gone(self, exited: asyncio.Future[int]) -> None:
        if self._closed:
            return
        self.crashes += 1
        self.since = time.time()
        status = None if exited.cancelled() else exited.result()
        log.error("inference server exited with status %s%s", status,
                  "".join(f"\n  | {line}" for line in self.launcher.tail(TAIL_LINES)))

    async def adopt(self) -> bool:
        """Take over a server an earlier daemon left running, if it is healthy."""
        if not await self.launcher.adopt():
            return False
        reason = await self._health.probe(self.host, self.port, self.health_path, timeout=5.0)
        if reason is not None:
            log.warning("inference server left running by an earlier daemon but unhealthy (%s); "
                        "stopping", reason)
            await self.launcher.stop()
            return False
        self._up(None)
        return True

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        await self.launcher.stop()

    def snapshot(self) -> dict[str, Any]:
        err = self.last_error
        return {
            "name": NAME,
            "state": str(self.state),
            "since": self.since,
            "pid": self.launcher.pid,
            "launcher": self.launcher.kind,
            "host": self.host,
            "port": self.port,
            "starts": self.starts,
            "crashes": self.crashes,
            "last_start_seconds": self.last_start_seconds,
            "last_error": None if err is None else err.as_json(NAME),
            "log_error": self.launcher.log_error,
        }
