"""One owner per model: every state change of a model is decided here.

Requests never check-then-act on a model's state. They call `ensure_ready()`,
which joins whatever transition is under way (single flight) or begins one;
stops go through `stop()`. Both run on the event loop with no await between
reading the state and claiming the transition, so there is no window in which
two callers decide differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from model_starter.config import ModelSpec
from model_starter.health import HealthChecker, ReadinessFailed
from model_starter.launchers import Launcher, StartError

__all__ = ["ModelSupervisor", "State"]

log = logging.getLogger("model_starter.supervisor")

TAIL_LINES = 20


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class ModelSupervisor:
    def __init__(
        self,
        spec: ModelSpec,
        launcher: Launcher,
        health: HealthChecker,
        before_start: Callable[[ModelSupervisor], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.launcher = launcher
        self.health = health
        self._before_start = before_start
        self._clock = clock
        self.state = State.STOPPED
        self.since = time.time()
        self.starts = 0
        self.failed_starts = 0
        self.held = 0  # requests waiting in the daemon for this model
        self.last_error: StartError | None = None
        self.last_activity = clock()
        self.last_start_seconds: float | None = None
        self._transition: asyncio.Task[None] | None = None
        self._transition_kind: State | None = None
        self._closed = False

    # -- requests ------------------------------------------------------------------------

    async def ensure_ready(self) -> bool:
        """Return once the model is ready; True if it already was (nothing had to be done).

        Every concurrent caller joins the same start and gets the same StartError.
        """
        self.held += 1
        self.last_activity = self._clock()
        try:
            async with asyncio.timeout(self.spec.hold_timeout):
                return await self._ensure()
        except TimeoutError:
            raise StartError(
                "timeout",
                f"model '{self.spec.name}' was not ready within {self.spec.hold_timeout:g}s",
                log_tail=self.launcher.tail(TAIL_LINES),
                retry_after=10,
            ) from None
        finally:
            self.held -= 1
            self.last_activity = self._clock()

    async def _ensure(self) -> bool:
        joined_start = False
        while True:
            if self.state is State.READY:
                return not joined_start
            if self._closed:
                raise StartError("shutting_down", "model-starter is shutting down", retry_after=5)
            if self._transition is None:
                self._begin(State.STARTING, self._start())
            if self._transition_kind is State.STARTING:
                joined_start = True
            assert self._transition is not None
            task = self._transition
            if self._transition_kind is State.STARTING:
                await asyncio.shield(task)  # re-raises the start's StartError in every waiter
            else:
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)

    # -- transitions ---------------------------------------------------------------------

    def _begin(self, state: State, coro: Coroutine[Any, Any, None]) -> None:
        self._set_state(state)
        self._transition_kind = state
        self._transition = asyncio.get_running_loop().create_task(coro)
        # A start nobody waits for (preload, admin) must not log "exception never retrieved".
        self._transition.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _end(self, state: State) -> None:
        self._transition = None
        self._transition_kind = None
        self._set_state(state)

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            log.info("model=%s state %s -> %s", self.spec.name, self.state, state)
            self.state = state
            self.since = time.time()

    async def _start(self) -> None:
        spec = self.spec
        t0 = self._clock()
        self.starts += 1
        try:
            if self._before_start is not None:
                await self._before_start(self)
            await self.launcher.start()
            reason = await self.health.wait_ready(
                spec.host, spec.port, spec.health, t0 + spec.startup_timeout, self.launcher.exited
            )
            if reason is not None:
                await self.launcher.stop()
                raise StartError(
                    "startup_timeout",
                    f"model '{spec.name}' was not healthy after {spec.startup_timeout:g}s "
                    f"(last check of {spec.health}: {reason}); the process was stopped",
                    log_tail=self.launcher.tail(TAIL_LINES),
                    retry_after=max(5, int(spec.startup_timeout)),
                )
        except ReadinessFailed as exc:
            self._fail(StartError(
                "exited",
                f"model '{spec.name}' exited with status {exc.status} while starting",
                exit_status=exc.status,
                log_tail=self.launcher.tail(TAIL_LINES),
            ))
        except StartError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            await asyncio.shield(self.launcher.stop())
            self._fail(StartError("stopped", f"the start of model '{spec.name}' was cancelled"))
        except Exception as exc:  # a bug must still reach every waiter as a clear error
            log.exception("model=%s unexpected error while starting", spec.name)
            await asyncio.shield(self.launcher.stop())
            self._fail(StartError("internal_error", f"{type(exc).__name__}: {exc}"))
        self.last_start_seconds = self._clock() - t0
        self.last_error = None
        self.last_activity = self._clock()
        self._end(State.READY)
        log.info("model=%s ready in %.3fs pid=%s", spec.name, self.last_start_seconds,
                 self.launcher.pid)
        exited = self.launcher.exited
        if exited is not None:
            asyncio.get_running_loop().create_task(self._watch_exit(exited))

    def _fail(self, exc: StartError) -> None:
        self.failed_starts += 1
        self.last_error = exc
        self._end(State.FAILED)
        log.error("model=%s start failed: %s%s", self.spec.name, exc.detail,
                  "".join(f"\n  | {line}" for line in exc.log_tail))
        raise exc

    async def _watch_exit(self, exited: asyncio.Future[int]) -> None:
        status = await exited
        if self.state is State.READY and self.launcher.exited is exited:
            tail = self.launcher.tail(TAIL_LINES)
            self.last_error = StartError(
                "crashed", f"model '{self.spec.name}' exited with status {status} while ready",
                exit_status=status, log_tail=tail,
            )
            log.error("model=%s crashed: exit status %s%s", self.spec.name, status,
                      "".join(f"\n  | {line}" for line in tail))
            self._end(State.STOPPED)

    async def stop(self, reason: str) -> None:
        """Stop the model (cancelling a start under way) and return once it is gone."""
        while True:
            task = self._transition
            if task is None:
                if self.state is not State.READY:
                    return
                log.info("model=%s stopping (%s)", self.spec.name, reason)
                self._begin(State.STOPPING, self._stop())
                task = self._transition
                assert task is not None
            elif self._transition_kind is State.STARTING:
                task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)

    async def _stop(self) -> None:
        try:
            await self.launcher.stop()
        finally:
            self._end(State.STOPPED)

    async def recheck(self, grace: float = 2.0) -> None:
        """After nginx saw this model fail mid-request: make sure a dead process is noticed.

        The process may have closed the connection an instant before its exit is reaped;
        wait (bounded) for that so `ensure_ready` restarts it instead of declaring it ready.
        """
        exited = self.launcher.exited
        if self.state is not State.READY or exited is None or exited.done():
            return
        spec = self.spec
        if await self.health.probe(spec.host, spec.port, spec.health, timeout=grace) is None:
            return
        await asyncio.wait([exited], timeout=grace)
        await asyncio.sleep(0)  # let the exit watcher record the crash

    async def close(self) -> None:
        """Refuse new starts and stop the model (daemon shutdown)."""
        self._closed = True
        await self.stop("shutdown")

    def maintain(self) -> None:
        self.launcher.maintain()
