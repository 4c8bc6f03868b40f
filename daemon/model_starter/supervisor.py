"""One owner per model: every state change of a model is decided here. Requests never
check-then-act on a model's state: they call `ensure_ready()`, which joins the transition under
way (single flight) or begins one; stops go through `stop()` / `try_stop()`. All run on the event
loop with no await between reading the state and claiming the transition, so no two callers
decide differently (llama-swap's TTL-vs-request deadlock came from deciding outside)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, NoReturn

from model_starter.activity import Peer, Seen, peers_of
from model_starter.config import ModelSpec
from model_starter.events import (
    Adopted,
    Event,
    FailureReason,
    Listener,
    Started,
    StartFailed,
    State,
    StateChanged,
    Stopped,
    StopReason,
    check_transition,
)
from model_starter.health import TAIL_LINES, Health, start_until_healthy
from model_starter.history import History
from model_starter.launchers import Launcher, StartError
from model_starter.lifecycle import NOTHING, Lifecycle
from model_starter.policy import retry_after
from model_starter.sleeping import SleepMixin
from model_starter.usage import HeldTotal, Usage

__all__ = ["ModelSupervisor", "State"]

log = logging.getLogger("model_starter.supervisor")

# Retry-After ceilings of the 503s that wait for a start (the constants used before estimates).
QUEUE_FULL_RETRY = 5
HOLD_TIMEOUT_RETRY = 10


class ModelSupervisor(SleepMixin):
    def __init__(
        self,
        spec: ModelSpec,
        launcher: Launcher,
        health: Health,
        before_start: Callable[[ModelSupervisor], Awaitable[None]] | None = None,
        release_grace: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        held_total: HeldTotal | None = None,
        peers: Callable[[int, str, str], Seen] = peers_of,
    ) -> None:
        self.spec = spec
        self.lifecycle: Lifecycle = NOTHING  # the pool's: hooks, KV cache (healthy, before a stop)
        self._peers = peers  # the connections a port has now (the replays' baseline)
        self.replay_source: str | None = None  # nginx replays from it (routing.replay_source)
        self.refresh_activity: Callable[[], None] = lambda: None  # the pool's: a scan, now
        self.launcher = launcher
        self.health = health
        self._before_start = before_start
        self._clock = clock
        self.listeners: list[Listener] = []
        self._state = State.STOPPED
        self.since = time.time()
        self.history = History(spec.crash_loop, spec.startup_timeout)
        self.usage = Usage(clock(), release_grace, held_total or HeldTotal(spec.max_waiting))
        self._admitted = False  # holds its resources (granted by admission)
        self._start_began: float | None = None
        self._transition: asyncio.Task[None] | None = None
        self._transition_kind: State | None = None
        self._closed = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def admitted(self) -> bool:
        """Holds its resources: admitted for a start, or running."""
        return self._admitted

    # -- verbs for the pool's components ------------------------------------------------------

    def admit(self) -> None:
        """Admission granted this start its resources."""
        self._admitted = True

    @property
    def held(self) -> int:
        return self.usage.held

    def touch(self, now: float | None = None) -> None:
        """A request for this model just finished (nginx's activity feed)."""
        self.usage.last_activity = self._clock() if now is None else now

    def observe(self, in_flight: int, last_close_ago: float | None, now: float,
                peers: Mapping[Peer, float | None] | None = None) -> None:
        """What the activity monitor saw at the model's port (`peers`: its connections)."""
        self.usage.observe(in_flight, last_close_ago, now, peers)

    def set_release_grace(self, seconds: float) -> None:
        """At most how long released requests count as busy until their replays are seen."""
        self.usage.release_grace = seconds

    def busy(self, now: float | None = None) -> bool:
        return self.usage.busy(self._clock() if now is None else now)

    def backoff_until(self, now: float | None = None) -> float | None:
        """Monotonic time until which no start is tried (crash-loop protection)."""
        return self.history.backoff_until(self._clock() if now is None else now)

    def expected_start_seconds(self) -> float:
        """A start's expected duration (`policy.StartTimes`: p90 of the last 20, else a guess)."""
        return self.history.start_times.expected()

    def starting_seconds(self, now: float | None = None) -> float | None:
        """How long the start under way has taken so far (None when not starting)."""
        if self._state not in (State.STARTING, State.WAKING) or self._start_began is None:
            return None
        return (self._clock() if now is None else now) - self._start_began

    def _retry_after(self, ceiling: int) -> int:
        """Retry-After for a request that could not wait: the expected rest of the start."""
        return retry_after(self.expected_start_seconds() - (self.starting_seconds() or 0), ceiling)

    async def ensure_ready(self, replay: bool = True) -> bool:
        """Return once the model is ready; True if it already was. `replay`: the request goes to
        the model once released (not a preload or an admin start): it keeps the model busy until
        it arrived. READY returns at once (the auth_request hot path) unless its process is known
        to have exited; STOPPED, FAILED begin a start (or StartError ``crash_loop``), SLEEPING a
        wake, and wait; STARTING, WAKING join it (single flight: every waiter gets the same
        result); STOPPING waits for the stop, then starts afresh. StartError ``queue_full`` past
        `max_waiting` (or `max_held`), ``timeout`` after `hold_timeout`, ``shutting_down``."""
        self._notice_exit()
        if self._state is State.READY:
            self.usage.last_activity = self._clock()
            return True
        full = self.usage.refusal(self.spec.name, self.spec.max_waiting)
        if full:
            raise StartError(FailureReason.QUEUE_FULL, full,
                             retry_after=self._retry_after(QUEUE_FULL_RETRY))
        self.usage.hold(1)
        self.usage.held_replays += replay
        self.usage.last_activity = self._clock()
        try:
            async with asyncio.timeout(self.spec.hold_timeout):
                return await self._ensure()
        except TimeoutError:
            raise StartError(
                FailureReason.TIMEOUT,
                f"model '{self.spec.name}' was not ready within {self.spec.hold_timeout:g}s",
                log_tail=self.launcher.tail(TAIL_LINES),
                retry_after=self._retry_after(HOLD_TIMEOUT_RETRY),
            ) from None
        finally:
            self.usage.hold(-1)
            self.usage.held_replays -= replay
            self.usage.last_activity = self._clock()

    async def _ensure(self) -> bool:
        joined_start = False
        while True:
            self._notice_exit()
            if self._state is State.READY:
                return not joined_start
            if self._closed:
                raise StartError(FailureReason.SHUTTING_DOWN, "model-starter is shutting down",
                                 retry_after=5)
            if self._transition is None and self._state is State.SLEEPING:
                self.begin_wake()  # single flight, like a start
            elif self._transition is None:
                refused = self.history.crash_loop_error(self.spec.name, self._clock())
                if refused is not None:
                    raise refused
                self._begin(State.STARTING, self._start())
            assert self._transition is not None
            task = self._transition
            if self._transition_kind in (State.STARTING, State.WAKING):
                joined_start = True
                await asyncio.shield(task)  # re-raises the start's StartError in every waiter
            else:  # a stop (or sleep) under way: wait for it, then start (or wake) afresh
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)

    def _begin(self, state: State, coro: Coroutine[Any, Any, None]) -> None:
        self._set_state(state)
        self._transition_kind = state
        self._transition = asyncio.get_running_loop().create_task(coro)  # no "never retrieved"
        self._transition.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _end(self, state: State) -> None:
        self._transition = None
        self._transition_kind = None
        if state is not State.READY:
            self._admitted = self._asleep = False
        self._set_state(state)

    def _set_state(self, state: State) -> None:
        if state is self._state:
            return
        check_transition(self.spec.name, self._state, state)
        old, self._state, self.since = self._state, state, time.time()
        log.info("model=%s state %s -> %s", self.spec.name, old, state)
        self.emit(StateChanged(model=self.spec.name, old=old, new=state))

    def emit(self, event: Event) -> None:  # a failing listener must not stop the others
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("model=%s event listener failed", self.spec.name)

    async def _start(self) -> None:
        spec = self.spec
        t0 = self._start_began = self._clock()
        self.history.starting()
        try:
            if self._before_start is not None:
                await self._before_start(self)
            await start_until_healthy(self.launcher, self.health, f"model '{spec.name}'",
                                      spec.host, spec.port, spec.health, spec.startup_timeout,
                                      t0 + spec.startup_timeout)
            await self.lifecycle.after_ready(self)  # healthy; then held requests are released
        except StartError as exc:
            if exc.reason is not FailureReason.EXITED:  # else there is nothing left to stop
                await asyncio.shield(self.launcher.stop())
            self._fail(exc, t0)
        except asyncio.CancelledError:
            await asyncio.shield(self.launcher.stop())
            self._fail(StartError(FailureReason.STOPPED,
                                  f"the start of model '{spec.name}' was cancelled"), t0)
        except Exception as exc:  # a bug must still reach every waiter as a clear error
            log.exception("model=%s unexpected error while starting", spec.name)
            await asyncio.shield(self.launcher.stop())
            self._fail(StartError(FailureReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"), t0)
        seconds = self._clock() - t0
        self.history.started(seconds)
        self._became_ready(self.usage.held_replays)
        log.info("model=%s ready in %.3fs pid=%s", spec.name, seconds, self.launcher.pid)
        self.emit(Started(model=spec.name, seconds=seconds, pid=self.launcher.pid))

    def _replays_baseline(self) -> Seen | None:  # the replays' connections now
        src = self.replay_source
        return None if src is None else self._peers(self.spec.port, self.spec.host, src)

    def replay_coming(self) -> None:
        """nginx was told to replay a request to this ready model (a late 504)."""
        self.usage.replay_coming(self._clock(), self._replays_baseline)

    def _became_ready(self, replays: int) -> None:
        self.history.last_error = None
        self.usage.released(self._clock(), replays, self._replays_baseline() if replays else None)
        self._end(State.READY)
        self._admitted = True
        exited = self.launcher.exited
        if exited is not None:
            exited.add_done_callback(lambda _: self._notice_exit())

    def _fail(self, exc: StartError, t0: float) -> NoReturn:
        self.history.failed(exc, self._clock())
        self._end(State.FAILED)
        log.error("model=%s start failed: %s%s", self.spec.name, exc.detail,
                  "".join(f"\n  | {line}" for line in exc.log_tail))
        self.emit(StartFailed(model=self.spec.name, reason=exc.reason, detail=exc.detail,
                              seconds=self._clock() - t0))
        raise exc

    def _notice_exit(self) -> None:
        """Record a crash if the ready model's process has ended (idempotent): called before every
        decision, so a request never sees "ready" for a process whose exit is already known."""
        exited = self.launcher.exited
        if (self._state in (State.READY, State.SLEEPING) and self._transition is None
                and exited is not None and exited.done()):
            status = exited.result()
            self._gone(f"exited with status {status} while {self._state}", status)

    def _gone(self, what: str, status: int | None) -> None:
        tail = self.launcher.tail(TAIL_LINES)
        self.history.crashed(StartError(FailureReason.CRASHED, f"model '{self.spec.name}' {what}",
                                        exit_status=status, log_tail=tail), self._clock())
        log.error("model=%s crashed: %s%s", self.spec.name, what,
                  "".join(f"\n  | {line}" for line in tail))
        self.emit(Stopped(model=self.spec.name, reason=StopReason.CRASH, exit_status=status))
        self._end(State.STOPPED)

    def try_stop(self, reason: StopReason, only_if_idle: bool = True) -> asyncio.Task[None] | None:
        """Begin stopping a ready or sleeping model if it agrees (idle, unless told otherwise)."""
        self._notice_exit()
        if not self.evictable or (only_if_idle and self.busy()):
            return None
        log.info("model=%s stopping (%s)", self.spec.name, reason)
        self.history.stop_reason = reason
        self._begin(State.STOPPING, self._stop(reason, only_if_idle))
        return self._transition

    async def stop(self, reason: StopReason) -> None:
        """Stop the model now (cancelling a start under way); return once it is gone."""
        while True:
            task = self._transition
            if task is None:
                task = self.try_stop(reason, only_if_idle=False)
                if task is None:
                    return
            elif self._transition_kind in (State.STARTING, State.WAKING):
                task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)

    async def _stop(self, reason: StopReason, only_if_idle: bool = False) -> None:
        try:
            if not self._asleep:  # (a crash never comes here; an engine asleep has no cache)
                await self.lifecycle.before_stop(self, reason)
                if only_if_idle and self._called_off():
                    self._end(State.READY)
                    return
            await self.launcher.stop()
        finally:
            if self._state is State.STOPPING:
                self.emit(Stopped(model=self.spec.name, reason=reason))
                self._end(State.STOPPED)

    def _called_off(self) -> bool:  # a fresh scan just before the signal: one at the port now?
        self.refresh_activity()  # (requests held here wait for the stop, then start it afresh)
        if not self.usage.in_flight:
            return False
        log.info("model=%s stop called off: a request arrived", self.spec.name)
        return True

    async def adopt(self) -> bool:
        """Take over a model an earlier daemon left running, if it is still healthy."""
        if self._state is not State.STOPPED or not await self.launcher.adopt():
            return False
        spec = self.spec
        reason = await self.health.probe(spec.host, spec.port, spec.health, timeout=5.0)
        if reason is not None:
            log.warning("model=%s left running by an earlier daemon but unhealthy (%s); stopping",
                        spec.name, reason)
            await self.launcher.stop()
            return False
        await self.wake_adopted()  # an earlier daemon may have put it to sleep
        self._became_ready(0)  # nobody was held
        log.info("model=%s adopted pid=%s", spec.name, self.launcher.pid)
        self.emit(Adopted(model=spec.name, pid=self.launcher.pid))
        return True

    async def recheck(self, grace: float = 1.0) -> None:
        """nginx got no answer from this model although it is ready. Our own process: wait (bounded)
        for its exit (a dying process can still accept). Command, V2: the health URL decides."""
        if self._state is not State.READY:
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
        if reason is not None and self._state is State.READY and self._transition is None:
            self._gone(f"stopped answering {spec.health} ({reason})", None)

    async def close(self, reason: StopReason = StopReason.SHUTDOWN) -> None:
        """Refuse new starts and stop the model (daemon shutdown, removed by a reload)."""
        self._closed = True
        await self.stop(reason)

    def idle_for_replacement(self) -> bool:
        """Not running and nothing under way: its spec may be swapped (live reload)."""
        return self._transition is None and self._state in (State.STOPPED, State.FAILED)

    def inherit(self, old: ModelSupervisor) -> None:
        """Carry counters and history over from the supervisor this one replaces."""
        self.history.carry_over(old.history)
        self.listeners = list(old.listeners)

    def snapshot(self) -> dict[str, Any]:
        """The status of this model (the admin API's JSON)."""
        now = self._clock()
        starting = self.starting_seconds(now)
        return {
            "name": self.spec.name, "state": str(self._state), "since": self.since,
            "pid": self.launcher.pid, "launcher": self.launcher.kind, "mode": self.spec.mode,
            "host": self.spec.host, "port": self.spec.port,
            **self.usage.as_json(now, time.time(), self._state is State.READY),
            "starting_seconds": None if starting is None else round(starting, 3),
            **self.history.as_json(self.spec.name, now),
            "pinned": self.spec.pinned,
            "requires": dict(self.spec.requires),
            **self.sleep_status(),
            "log_error": self.launcher.log_error,
            "lifecycle": self.lifecycle.status(),
        }
