"""The sleep state of a model whose engine can free accelerator memory without exiting
(vLLM's ``POST /sleep?level=1`` / ``POST /wake_up``; llama.cpp's ``--sleep-idle-seconds``).

A mixin of `ModelSupervisor`: the same owner decides every state change, on the event loop.

    READY --try_sleep--> SLEEPING (sleep action under way, then asleep)
    SLEEPING --ensure_ready / engine_woke--> WAKING --> READY  (single flight, like a start)
    SLEEPING --try_stop--> STOPPING --> STOPPED   (idle_timeout, eviction, manual)

While asleep the model holds `sleep.requires` instead of `requires` (`holds()`); a wake
goes through admission like a start (it may have to make room). A failed sleep action
stops the model instead (the point was to free the memory); a failed wake stops it and
fails the held requests with a 503, like a failed start.

Engines that wake themselves (llama.cpp) have no actions: the daemon sleeps the model in
its books after the same idle time the engine uses, and when the activity monitor sees a
request at the port of such a sleeper (error_page mode: nginx sends it there directly),
the model is woken in the books (`engine_woke`) and admission makes room for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp

from model_starter.config import ModelSpec
from model_starter.events import FailureReason, State, StopReason
from model_starter.health import TAIL_LINES, ReadinessFailed
from model_starter.hooks import run_actions
from model_starter.launchers import StartError
from model_starter.lifecycle_spec import HttpAction, Phase

if TYPE_CHECKING:
    from model_starter.health import Health
    from model_starter.history import History
    from model_starter.launchers import Launcher
    from model_starter.usage import Usage

__all__ = ["ActionRunner", "SleepMixin", "sleep_action_runner"]

log = logging.getLogger("model_starter.sleeping")

# Runs a sleep or wake action against the model: None on success, else what went wrong.
ActionRunner = Callable[[Phase, HttpAction], Awaitable[str | None]]


async def _no_runner(phase: Phase, action: HttpAction) -> str | None:
    return "no HTTP client (the pool sets one)"


def sleep_action_runner(spec: ModelSpec, session: aiohttp.ClientSession) -> ActionRunner:
    """Run a sleep or wake action with the daemon's HTTP client (as the hooks are run)."""
    async def run(phase: Phase, action: HttpAction) -> str | None:
        (result,) = await run_actions(phase, (action,), spec, session)
        return None if result.ok else result.detail or "failed"
    return run


class SleepMixin:
    run_action: ActionRunner = staticmethod(_no_runner)  # the pool's (an HTTP client)
    _asleep = False  # the engine has freed its memory (it holds `sleep.requires`)
    _asleep_since = 0.0  # monotonic

    if TYPE_CHECKING:
        spec: ModelSpec
        launcher: Launcher
        health: Health
        usage: Usage
        history: History
        _state: State
        _admitted: bool
        _start_began: float | None
        _transition: asyncio.Task[None] | None
        _transition_kind: State | None
        _before_start: Callable[[Any], Awaitable[None]] | None
        _clock: Callable[[], float]

        def _begin(self, state: State, coro: Coroutine[Any, Any, None]) -> None: ...
        def _set_state(self, state: State) -> None: ...
        def _became_ready(self, replays: int) -> None: ...
        def _fail(self, exc: StartError, t0: float) -> NoReturn: ...
        async def _stop(self, reason: StopReason) -> None: ...
        def busy(self, now: float | None = None) -> bool: ...
        def _notice_exit(self) -> None: ...

    # -- capacity ------------------------------------------------------------------------

    def holds(self) -> Mapping[str, float] | None:
        """What the model holds of the capacity now; None: nothing (stopped, or not admitted)."""
        state, sleeps = self._state, self.spec.sleeps
        if sleeps is not None and (self._asleep or (state is State.WAKING and not self._admitted)):
            return sleeps.requires
        if state in (State.READY, State.STOPPING, State.SLEEPING) or (
            state in (State.STARTING, State.WAKING) and self._admitted
        ):
            return self.spec.requires
        return None

    def sleep_holds(self) -> Mapping[str, float] | None:
        """What it would hold if put to sleep now (None: it cannot be)."""
        sleeps = self.spec.sleeps
        if sleeps is None or self._state is not State.READY or self._transition is not None:
            return None
        return sleeps.requires

    @property
    def evictable(self) -> bool:
        """Nothing under way: it may be stopped (or put to sleep) to make room."""
        return self._transition is None and self._state in (State.READY, State.SLEEPING)

    @property
    def asleep(self) -> bool:
        return self._asleep

    def request_since_asleep(self, in_flight: int, last_close_ago: float | None,
                             now: float) -> bool:
        """What the port shows: a request in flight, or one that ended after the model fell
        asleep (a short one between two scans)."""
        return self._asleep and (in_flight > 0 or (
            last_close_ago is not None and now - last_close_ago > self._asleep_since))

    # -- sleep -----------------------------------------------------------------------------

    def try_sleep(self, reason: StopReason, only_if_idle: bool = True) -> asyncio.Task[None] | None:
        """Begin putting a ready model to sleep if it agrees (idle): the task or None."""
        self._notice_exit()
        if (self.spec.sleeps is None or self._state is not State.READY
                or self._transition is not None or (only_if_idle and self.busy())):
            return None
        log.info("model=%s going to sleep (%s)", self.spec.name, reason)
        self._begin(State.SLEEPING, self._sleep(reason))
        return self._transition

    async def _sleep(self, reason: StopReason) -> None:
        sleeps = self.spec.sleeps
        assert sleeps is not None
        t0 = self._clock()
        problem = None if sleeps.sleep is None else await self.run_action("sleep", sleeps.sleep)
        if problem is None:
            self._asleep, self._admitted, self._asleep_since = True, False, self._clock()
            self._transition = self._transition_kind = None
            log.info("model=%s asleep in %.3fs pid=%s (holds %s)", self.spec.name,
                     self._clock() - t0, self.launcher.pid, dict(sleeps.requires))
            self._notice_exit()  # it may have died meanwhile
            return
        log.warning("model=%s could not sleep (%s); stopping it instead", self.spec.name, problem)
        self.history.stop_reason = reason
        self._set_state(State.STOPPING)
        self._transition_kind = State.STOPPING
        await self._stop(reason)

    # -- wake ------------------------------------------------------------------------------

    def begin_wake(self) -> None:
        """A request for a sleeping model (no transition under way): wake it once for all."""
        self._begin(State.WAKING, self._wake())

    def engine_woke(self) -> None:
        """A request reached a self-waking engine asleep (the monitor saw it at its port)."""
        sleeps = self.spec.sleeps
        if (sleeps is not None and sleeps.self_waking and self._state is State.SLEEPING
                and self._transition is None):
            log.info("model=%s woken by a request at its port", self.spec.name)
            self.begin_wake()

    async def _wake(self) -> None:
        spec, sleeps = self.spec, self.spec.sleeps
        assert sleeps is not None
        t0 = self._start_began = self._clock()
        try:
            if self._before_start is not None:
                await self._before_start(self)  # admission: room for `requires` again
            self._asleep = False
            if sleeps.wake is not None:
                problem = await self.run_action("wake", sleeps.wake)
                if problem is not None:
                    raise StartError(FailureReason.WAKE_FAILED,
                                     f"model '{spec.name}' did not wake: {problem}",
                                     log_tail=self.launcher.tail(TAIL_LINES), retry_after=5)
                reason = await self.health.wait_ready(spec.host, spec.port, spec.health,
                                                      time.monotonic() + spec.startup_timeout,
                                                      self.launcher.exited)
                if reason is not None:
                    raise StartError(FailureReason.WAKE_FAILED,
                                     f"model '{spec.name}' was not healthy "
                                     f"{spec.startup_timeout:g}s after waking ({reason})",
                                     log_tail=self.launcher.tail(TAIL_LINES), retry_after=5)
        except ReadinessFailed as exc:
            self._wake_failed(StartError(
                FailureReason.EXITED, f"model '{spec.name}' exited with status {exc.status} "
                "while waking", exit_status=exc.status, log_tail=self.launcher.tail(TAIL_LINES)),
                t0)
        except StartError as exc:
            await asyncio.shield(self.launcher.stop())
            self._wake_failed(exc, t0)
        except asyncio.CancelledError:
            await asyncio.shield(self.launcher.stop())
            self._wake_failed(StartError(FailureReason.STOPPED,
                                         f"the wake of model '{spec.name}' was cancelled"), t0)
        except Exception as exc:  # a bug must still reach every waiter as a clear error
            log.exception("model=%s unexpected error while waking", spec.name)
            await asyncio.shield(self.launcher.stop())
            self._wake_failed(StartError(FailureReason.INTERNAL_ERROR,
                                         f"{type(exc).__name__}: {exc}"), t0)
        self._became_ready(self.usage.held_replays)
        log.info("model=%s awake in %.3fs pid=%s", spec.name, self._clock() - t0,
                 self.launcher.pid)

    async def wake_adopted(self) -> None:
        """An engine adopted from an earlier daemon may be asleep: wake it (vLLM: a no-op when
        awake); it then counts as ready, holding `requires`."""
        sleeps = self.spec.sleeps
        if sleeps is not None and sleeps.wake is not None:
            problem = await self.run_action("wake", sleeps.wake)
            if problem is not None:
                log.warning("model=%s adopted; waking it failed: %s", self.spec.name, problem)

    def _wake_failed(self, exc: StartError, t0: float) -> NoReturn:
        self._asleep = False
        self._fail(exc, t0)

    def sleep_status(self) -> dict[str, Any]:
        """The status' sleep fields: what it holds now, and its sleep settings."""
        sleeps = self.spec.sleeps
        holds = self.holds()
        return {
            "holds": {} if holds is None else dict(holds),
            "sleep": None if sleeps is None else {
                "preset": str(sleeps.preset), "after": sleeps.after,
                "requires": dict(sleeps.requires), "asleep": self._asleep,
                "self_waking": sleeps.self_waking,
            },
        }
