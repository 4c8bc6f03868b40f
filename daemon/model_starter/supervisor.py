"""One owner per model: every state change of a model is decided here.

Requests never check-then-act on a model's state. They call `ensure_ready()`,
which joins whatever transition is under way (single flight) or begins one;
stops go through `stop()` / `try_stop()`. All run on the event loop with no await
between reading the state and claiming the transition, so no two callers can
decide differently (llama-swap's TTL-vs-request deadlock came from deciding outside).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from model_starter.config import ModelSpec
from model_starter.health import HealthChecker, ReadinessFailed
from model_starter.launchers import Launcher, StartError
from model_starter.policy import backoff_until

__all__ = ["Event", "ModelSupervisor", "State"]

log = logging.getLogger("model_starter.supervisor")

TAIL_LINES = 20
# Failures that say nothing about the model itself never count towards a crash loop.
NOT_THE_MODELS_FAULT = frozenset(
    {"port_in_use", "stopped", "shutting_down", "no_capacity", "capacity_timeout"}
)


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


Event = dict[str, Any]
Listener = Callable[[Event], None]


class ModelSupervisor:
    def __init__(
        self,
        spec: ModelSpec,
        launcher: Launcher,
        health: HealthChecker,
        before_start: Callable[[ModelSupervisor], Awaitable[None]] | None = None,
        release_grace: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.launcher = launcher
        self.health = health
        self._before_start = before_start
        self.release_grace = release_grace
        self._clock = clock
        self.listeners: list[Listener] = []
        self.state = State.STOPPED
        self.since = time.time()
        self.starts = 0
        self.failed_starts = 0
        self.crashes = 0
        self.held = 0  # requests waiting in the daemon for this model
        self.in_flight = 0  # requests at the model, as the kernel last showed
        self.admitted = False  # holds its resources (set by the pool's admission)
        self.last_error: StartError | None = None
        self.last_activity = clock()
        self.last_start_seconds: float | None = None
        self.stop_reason: str | None = None
        self._released_until = 0.0
        self._failures: collections.deque[float] = collections.deque(maxlen=64)
        self._transition: asyncio.Task[None] | None = None
        self._transition_kind: State | None = None
        self._closed = False

    # -- observations ----------------------------------------------------------------------

    def busy(self, now: float | None = None) -> bool:
        """Requests in flight, held here, or released but maybe not yet replayed."""
        now = self._clock() if now is None else now
        return self.held > 0 or self.in_flight > 0 or now < self._released_until

    def observe(self, in_flight: int, last_close_ago: float | None, now: float) -> None:
        self.in_flight = in_flight
        if in_flight > 0:
            self.last_activity = now
        elif last_close_ago is not None:
            self.last_activity = max(self.last_activity, now - last_close_ago)

    def idle_for(self, now: float) -> float:
        return 0.0 if self.busy(now) else now - self.last_activity

    def backoff_until(self, now: float | None = None) -> float | None:
        """Monotonic time until which no start is tried (crash-loop protection)."""
        c = self.spec.crash_loop
        now = self._clock() if now is None else now
        return backoff_until(self._failures, now, c.max_failures, c.window, c.backoff)

    # -- requests ----------------------------------------------------------------------------

    async def ensure_ready(self) -> bool:
        """Return once the model is ready; True if it already was (nothing had to be done).

        Every concurrent caller joins the same start and gets the same StartError.
        """
        self._notice_exit()
        if self.state is State.READY:  # the hot path of auth_request mode: memory only
            self.last_activity = self._clock()
            return True
        if self.held >= self.spec.max_waiting:
            raise StartError(
                "queue_full",
                f"{self.held} requests already wait for model '{self.spec.name}' "
                f"(max_waiting {self.spec.max_waiting})",
                retry_after=5,
            )
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
            self._notice_exit()
            if self.state is State.READY:
                return not joined_start
            if self._closed:
                raise StartError("shutting_down", "model-starter is shutting down", retry_after=5)
            if self._transition is None:
                self._refuse_in_backoff()
                self._begin(State.STARTING, self._start())
            assert self._transition is not None
            task = self._transition
            if self._transition_kind is State.STARTING:
                joined_start = True
                await asyncio.shield(task)  # re-raises the start's StartError in every waiter
            else:  # a stop under way: wait for it, then start afresh
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)

    def _refuse_in_backoff(self) -> None:
        now = self._clock()
        until = self.backoff_until(now)
        if until is None:
            return
        c = self.spec.crash_loop
        last = self.last_error.detail if self.last_error else "failures"
        raise StartError(
            "crash_loop",
            f"model '{self.spec.name}' failed {c.max_failures} times within {c.window:g}s; "
            f"no start for {until - now:.0f}s more (last: {last})",
            log_tail=self.last_error.log_tail if self.last_error else [],
            exit_status=self.last_error.exit_status if self.last_error else None,
            retry_after=max(1, int(until - now + 0.999)),
        )

    # -- transitions -------------------------------------------------------------------------

    def _begin(self, state: State, coro: Coroutine[Any, Any, None]) -> None:
        self._set_state(state)
        self._transition_kind = state
        self._transition = asyncio.get_running_loop().create_task(coro)
        # A start nobody waits for (preload, admin) must not log "exception never retrieved".
        self._transition.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _end(self, state: State) -> None:
        self._transition = None
        self._transition_kind = None
        if state is not State.READY:
            self.admitted = False
        self._set_state(state)

    def _set_state(self, state: State) -> None:
        if state is self.state:
            return
        old, self.state, self.since = self.state, state, time.time()
        log.info("model=%s state %s -> %s", self.spec.name, old, state)
        self.emit("state", old=str(old), new=str(state))

    def emit(self, kind: str, **data: Any) -> None:
        event: Event = {"event": kind, "model": self.spec.name, "time": time.time(), **data}
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("model=%s event listener failed", self.spec.name)

    async def _start(self) -> None:
        spec = self.spec
        t0 = self._clock()
        self.starts += 1
        self.stop_reason = None
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
            ), t0)
        except StartError as exc:
            await asyncio.shield(self.launcher.stop())
            self._fail(exc, t0)
        except asyncio.CancelledError:
            await asyncio.shield(self.launcher.stop())
            self._fail(StartError("stopped", f"the start of model '{spec.name}' was cancelled"), t0)
        except Exception as exc:  # a bug must still reach every waiter as a clear error
            log.exception("model=%s unexpected error while starting", spec.name)
            await asyncio.shield(self.launcher.stop())
            self._fail(StartError("internal_error", f"{type(exc).__name__}: {exc}"), t0)
        self.last_start_seconds = self._clock() - t0
        self._became_ready()
        log.info("model=%s ready in %.3fs pid=%s", spec.name, self.last_start_seconds,
                 self.launcher.pid)
        self.emit("started", seconds=self.last_start_seconds, pid=self.launcher.pid)

    def _became_ready(self) -> None:
        now = self._clock()
        self.last_error = None
        self.last_activity = now
        # Held requests are released now; their replays are in flight until they connect.
        self._released_until = now + self.release_grace
        self._end(State.READY)
        self.admitted = True
        exited = self.launcher.exited
        if exited is not None:
            exited.add_done_callback(lambda _: self._notice_exit())

    def _fail(self, exc: StartError, t0: float) -> None:
        self.failed_starts += 1
        self.last_error = exc
        if exc.reason not in NOT_THE_MODELS_FAULT:
            self._failures.append(self._clock())
        self._end(State.FAILED)
        log.error("model=%s start failed: %s%s", self.spec.name, exc.detail,
                  "".join(f"\n  | {line}" for line in exc.log_tail))
        self.emit("start_failed", reason=exc.reason, detail=exc.detail,
                  seconds=self._clock() - t0)
        raise exc

    def _notice_exit(self) -> None:
        """Record a crash if the ready model's process has ended (idempotent, synchronous).

        Called from the exit future's callback and before every decision, so a request
        never sees "ready" for a process whose exit is already known.
        """
        exited = self.launcher.exited
        if self.state is State.READY and exited is not None and exited.done():
            status = exited.result()
            self._gone(f"exited with status {status} while ready", status)

    def _gone(self, what: str, status: int | None) -> None:
        tail = self.launcher.tail(TAIL_LINES)
        self.crashes += 1
        self._failures.append(self._clock())
        self.last_error = StartError("crashed", f"model '{self.spec.name}' {what}",
                                     exit_status=status, log_tail=tail)
        log.error("model=%s crashed: %s%s", self.spec.name, what,
                  "".join(f"\n  | {line}" for line in tail))
        self.stop_reason = "crash"
        self.emit("stopped", reason="crash", exit_status=status)
        self._end(State.STOPPED)

    def try_stop(self, reason: str, only_if_idle: bool = True) -> asyncio.Task[None] | None:
        """Begin stopping a ready model if the owner agrees (idle, unless told otherwise).

        Returns the stop task, or None when the model is not ready or is busy.
        """
        self._notice_exit()
        if self.state is not State.READY or self._transition is not None:
            return None
        if only_if_idle and self.busy():
            return None
        log.info("model=%s stopping (%s)", self.spec.name, reason)
        self.stop_reason = reason
        self._begin(State.STOPPING, self._stop(reason))
        return self._transition

    async def stop(self, reason: str) -> None:
        """Stop the model now (cancelling a start under way); return once it is gone."""
        while True:
            task = self._transition
            if task is None:
                task = self.try_stop(reason, only_if_idle=False)
                if task is None:
                    return
            elif self._transition_kind is State.STARTING:
                task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)

    async def _stop(self, reason: str) -> None:
        try:
            await self.launcher.stop()
        finally:
            self.emit("stopped", reason=reason)
            self._end(State.STOPPED)

    async def adopt(self) -> bool:
        """Take over a model an earlier daemon left running, if it is still healthy."""
        if self.state is not State.STOPPED or not await self.launcher.adopt():
            return False
        spec = self.spec
        reason = await self.health.probe(spec.host, spec.port, spec.health, timeout=5.0)
        if reason is not None:
            log.warning("model=%s left running by an earlier daemon but unhealthy (%s); stopping",
                        spec.name, reason)
            await self.launcher.stop()
            return False
        self._became_ready()
        self._released_until = 0.0
        log.info("model=%s adopted pid=%s", spec.name, self.launcher.pid)
        self.emit("adopted", pid=self.launcher.pid)
        return True

    async def recheck(self, grace: float = 1.0) -> None:
        """nginx could not get an answer from this model although we think it is ready.

        With a process of our own, wait (bounded) for its exit: a probe is racy, a dying
        process can still accept for an instant. Without one (command and V2 launchers)
        the health URL decides: a model that does not answer it is gone and is started
        again (a V2 model that someone unloaded, a container that died).
        """
        if self.state is not State.READY:
            return
        exited = self.launcher.exited
        if self.launcher.owns_process and exited is not None:
            if not exited.done():
                await asyncio.wait([exited], timeout=grace)
            self._notice_exit()
            return
        self._notice_exit()
        spec = self.spec
        reason = await self.health.probe(spec.host, spec.port, spec.health, timeout=grace + 1)
        if reason is not None and self.state is State.READY and self._transition is None:
            self._gone(f"stopped answering {spec.health} ({reason})", None)

    async def close(self, reason: str = "shutdown") -> None:
        """Refuse new starts and stop the model (daemon shutdown, removed by a reload)."""
        self._closed = True
        await self.stop(reason)

    def idle_for_replacement(self) -> bool:
        """Not running and nothing under way: its spec may be swapped (live reload)."""
        return self._transition is None and self.state in (State.STOPPED, State.FAILED)

    def inherit(self, old: ModelSupervisor) -> None:
        """Carry counters and history over from the supervisor this one replaces."""
        self.starts, self.failed_starts, self.crashes = old.starts, old.failed_starts, old.crashes
        self.last_error, self.stop_reason = old.last_error, old.stop_reason
        self._failures = old._failures
        self.listeners = old.listeners

    def maintain(self) -> None:
        self.launcher.maintain()
