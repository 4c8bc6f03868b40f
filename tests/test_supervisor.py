"""The supervisor's races, driven fast: a fake clock and a fake launcher with a scripted
history run the real `ModelSupervisor`, `Admission` and `ActivityMonitor` (no processes,
no sockets). The real-process tests (test_lifecycle, test_faults, ...) stay beside these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from model_starter.admission import Admission
from model_starter.config import ModelSpec, parse_config
from model_starter.events import (
    TRANSITIONS,
    Event,
    FailureReason,
    InvalidTransition,
    Started,
    StartFailed,
    State,
    StateChanged,
    Stopped,
    StopReason,
)
from model_starter.launchers import StartError
from model_starter.launchers.base import LauncherKind
from model_starter.lifecycle import Lifecycle
from model_starter.monitor import ActivityMonitor
from model_starter.supervisor import ModelSupervisor
from model_starter.usage import HeldTotal, Usage


class FakeClock:
    """Monotonic time that moves only when a test (or the fake launcher) says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeLauncher:
    """A model process in memory. `history` scripts its starts, one entry each: the
    seconds a start takes on the fake clock, or the StartError it fails with. A start
    or stop can be held at a gate until the test opens it."""

    kind: LauncherKind = "process"
    owns_process = True

    def __init__(self, clock: FakeClock, history: list[float | StartError] | None = None) -> None:
        self.clock = clock
        self.history = list(history or [])
        self.calls: list[str] = []
        self.start_gate: asyncio.Event | None = None
        self.stop_gate: asyncio.Event | None = None
        self._exited: asyncio.Future[int] | None = None
        self._pid = 100

    @property
    def pid(self) -> int | None:
        return self._pid if self._exited is not None and not self._exited.done() else None

    @property
    def exited(self) -> asyncio.Future[int] | None:
        return self._exited

    @property
    def log_error(self) -> str | None:
        return None

    @property
    def activity_port(self) -> int | None:
        return None

    async def start(self) -> None:
        self.calls.append("start")
        step = self.history.pop(0) if self.history else 0.0
        if self.start_gate is not None:
            await self.start_gate.wait()
        if isinstance(step, StartError):
            raise step
        self.clock.advance(step)
        self._pid += 1
        self._exited = asyncio.get_running_loop().create_future()

    async def adopt(self) -> bool:
        return False

    async def stop(self) -> None:
        self.calls.append("stop")
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.exit(-15)

    def exit(self, status: int) -> None:
        """The process ends (a crash, when the test calls it)."""
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(status)

    def tail(self, lines: int = 20) -> list[str]:
        return ["fake log line"]

    def maintain(self) -> None:
        return None

    def replay_safe(self, first_status: int | None) -> bool:
        return False

    async def server_state(self) -> str | None:
        return None


class FakeHealth:
    """Healthy whenever the fake process runs."""

    def __init__(self, launcher: FakeLauncher) -> None:
        self.launcher = launcher

    async def probe(self, host: str, port: int, path: str, timeout: float = 5.0) -> str | None:
        return None if self.launcher.pid is not None else "connection refused"

    async def wait_ready(self, host: str, port: int, path: str, deadline: float,
                         exited: asyncio.Future[int] | None) -> str | None:
        return await self.probe(host, port, path)


def spec(name: str = "m", **fields: Any) -> ModelSpec:
    """A model spec as the config file gives it (parsed, so defaults are the real ones)."""
    extra = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    text = f"models:\n  {name}:\n    command: [run]\n    port: 9001\n{extra}"
    if "requires" in fields:
        text = "resources: {gpu: 1}\n" + text
    return parse_config(text, "test.yaml", environ={}).models[name]


def supervisor(
    clock: FakeClock, history: list[float | StartError] | None = None, name: str = "m",
    before_start: Callable[[ModelSupervisor], Awaitable[None]] | None = None, **fields: Any,
) -> tuple[ModelSupervisor, FakeLauncher, list[Event]]:
    launcher = FakeLauncher(clock, history)
    sup = ModelSupervisor(spec(name, **fields), launcher, FakeHealth(launcher), before_start,
                          release_grace=3.0, clock=clock)
    events: list[Event] = []
    sup.listeners.append(events.append)
    return sup, launcher, events


async def settle() -> None:
    """Let every task that can run, run (no time passes on the fake clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_single_flight_many_waiters_one_start() -> None:
    clock = FakeClock()
    sup, launcher, events = supervisor(clock, [2.5])
    launcher.start_gate = asyncio.Event()
    waiters = [asyncio.create_task(sup.ensure_ready()) for _ in range(50)]
    await settle()
    assert sup.state is State.STARTING and sup.held == 50
    launcher.start_gate.set()
    assert await asyncio.gather(*waiters) == [False] * 50
    assert launcher.calls == ["start"]
    assert sup.state is State.READY and sup.held == 0
    assert [e for e in events if isinstance(e, Started)] == [
        Started(model="m", seconds=2.5, pid=101, time=events[-1].time)]
    assert await sup.ensure_ready() is True  # the hot path: nothing to do


async def test_waiters_of_a_failed_start_all_get_its_error() -> None:
    clock = FakeClock()
    boom = StartError(FailureReason.SPAWN_FAILED, "cannot run 'run'")
    sup, launcher, events = supervisor(clock, [boom])
    launcher.start_gate = asyncio.Event()
    waiters = [asyncio.create_task(sup.ensure_ready()) for _ in range(5)]
    await settle()
    launcher.start_gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(r is boom for r in results)
    assert sup.state is State.FAILED
    failed = [e for e in events if isinstance(e, StartFailed)]
    assert [(e.reason, e.as_json()["reason"]) for e in failed] == [
        (FailureReason.SPAWN_FAILED, "spawn_failed")]


async def test_request_joining_a_stop_waits_then_starts_afresh() -> None:
    clock = FakeClock()
    sup, launcher, events = supervisor(clock, [1.0, 1.0])
    await sup.ensure_ready()
    launcher.stop_gate = asyncio.Event()
    stop = sup.try_stop(StopReason.MANUAL, only_if_idle=False)
    assert stop is not None and sup.state is State.STOPPING
    request = asyncio.create_task(sup.ensure_ready())
    await settle()
    assert not request.done() and launcher.calls == ["start", "stop"]  # no start during a stop
    launcher.stop_gate.set()
    assert await request is False
    assert launcher.calls == ["start", "stop", "start"]
    states = [(e.old, e.new) for e in events if isinstance(e, StateChanged)]
    assert states == [(State.STOPPED, State.STARTING), (State.STARTING, State.READY),
                      (State.READY, State.STOPPING), (State.STOPPING, State.STOPPED),
                      (State.STOPPED, State.STARTING), (State.STARTING, State.READY)]
    assert sup.state is State.READY


async def test_start_cancelled_by_shutdown() -> None:
    clock = FakeClock()
    sup, launcher, _ = supervisor(clock)
    launcher.start_gate = asyncio.Event()
    waiters = [asyncio.create_task(sup.ensure_ready()) for _ in range(3)]
    await settle()
    await sup.close()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [r.reason for r in results if isinstance(r, StartError)] == [FailureReason.STOPPED] * 3
    assert sup.state is State.FAILED and "stop" in launcher.calls
    with pytest.raises(StartError) as info:
        await sup.ensure_ready()
    assert info.value.reason is FailureReason.SHUTTING_DOWN
    assert sup.history.failures_count() == 0  # a cancelled start is not the model's fault


async def test_crash_while_ready_is_seen_at_once_and_restarts() -> None:
    clock = FakeClock()
    sup, launcher, events = supervisor(clock, [1.0, 1.0])
    await sup.ensure_ready()
    launcher.exit(137)
    await settle()  # the exit future's callback
    assert sup.state is State.STOPPED
    crash = [e for e in events if isinstance(e, Stopped)]
    assert crash[-1].as_json() == {"event": "stopped", "model": "m", "time": crash[-1].time,
                                   "reason": "crash", "exit_status": 137}
    snap = sup.snapshot()
    assert snap["crashes"] == 1 and snap["stop_reason"] == "crash"
    assert snap["last_error"]["error"] == "crashed"
    assert await sup.ensure_ready() is False
    assert launcher.calls == ["start", "start"]


async def test_crash_known_before_the_callback_is_never_ready() -> None:
    """The exit is noticed synchronously before a decision, not only from the callback."""
    clock = FakeClock()
    sup, launcher, _ = supervisor(clock, [1.0, 1.0])
    await sup.ensure_ready()
    launcher.exit(1)  # no settle(): the callback has not run yet
    assert await sup.ensure_ready() is False
    assert sup.history.crashes == 1


def monitor(sup: ModelSupervisor, clock: FakeClock) -> ActivityMonitor:
    return ActivityMonitor(lambda: {sup.spec.name: sup}, dict, lambda: None, lambda: None, clock)


async def test_idle_stop_racing_a_new_request() -> None:
    clock = FakeClock()
    sup, launcher, _ = supervisor(clock, [1.0, 1.0], idle_timeout=10)
    mon = monitor(sup, clock)
    await sup.ensure_ready()
    clock.advance(9.0)  # past the release grace (3 s), idle for less than 10 s
    mon.stop_idle()
    assert sup.state is State.READY
    clock.advance(0.5)
    assert await sup.ensure_ready() is True  # a request at the last moment ...
    clock.advance(0.5)
    mon.stop_idle()
    assert sup.state is State.READY  # ... resets the idle clock
    sup.observe(1, None, clock())  # a long request in flight keeps it busy
    clock.advance(60)
    mon.stop_idle()
    assert sup.state is State.READY
    sup.observe(0, 0.0, clock())
    clock.advance(10)
    launcher.stop_gate = asyncio.Event()
    mon.stop_idle()  # the idle stop wins ...
    assert sup.state is State.STOPPING and sup.history.stop_reason is StopReason.IDLE
    request = asyncio.create_task(sup.ensure_ready())  # ... a request right behind it
    await settle()
    launcher.stop_gate.set()
    assert await request is False  # waited for the stop, then started again
    assert sup.state is State.READY and launcher.calls == ["start", "stop", "start"]


async def test_idle_stop_called_off_by_a_request_that_arrived_since() -> None:
    """The scan just before the signal sees a request that came after the stop was decided:
    nothing is stopped, the model is ready again. A forced stop does not look."""
    clock = FakeClock()
    sup, launcher, events = supervisor(clock, [1.0], idle_timeout=5)
    await sup.ensure_ready()
    clock.advance(10)
    sup.refresh_activity = lambda: sup.observe(1, None, clock())  # nginx sent one directly
    task = sup.try_stop(StopReason.EVICTED)
    assert task is not None and sup.state is State.STOPPING
    await task
    assert sup.state is State.READY and launcher.calls == ["start"] and launcher.pid is not None
    assert [(e.old, e.new) for e in events if isinstance(e, StateChanged)][-2:] == [
        (State.READY, State.STOPPING), (State.STOPPING, State.READY)]
    assert not any(isinstance(e, Stopped) for e in events)
    await sup.stop(StopReason.MANUAL)  # busy, but told to
    assert sup.state is State.STOPPED and launcher.calls == ["start", "stop"]


async def test_a_request_held_during_an_idle_stop_waits_for_it() -> None:
    """A request that came to the daemon while the stop's save ran is held: it does not call
    the stop off (in auth_request mode that would undo an eviction admission asked for); it
    waits for the stop and starts the model afresh."""
    class SlowSave(Lifecycle):
        gate = asyncio.Event()

        async def before_stop(self, model: Any, reason: StopReason) -> None:
            await self.gate.wait()

    clock = FakeClock()
    sup, launcher, _ = supervisor(clock, [1.0, 1.0], idle_timeout=5)
    await sup.ensure_ready()
    sup.lifecycle = save = SlowSave()
    sup.refresh_activity = lambda: sup.observe(0, 0.0, clock())  # nothing at the port
    clock.advance(10)
    task = sup.try_stop(StopReason.EVICTED)
    assert task is not None
    request = asyncio.create_task(sup.ensure_ready())
    await settle()
    assert sup.state is State.STOPPING and sup.held == 1
    save.gate.set()
    assert await request is False and launcher.calls == ["start", "stop", "start"]


async def test_idle_stop_refused_while_a_request_is_held() -> None:
    clock = FakeClock()
    sup, _, _ = supervisor(clock, [1.0], idle_timeout=5)
    await sup.ensure_ready()
    clock.advance(100)
    sup.usage.held += 1  # a request waiting in the daemon (as ensure_ready counts it)
    assert sup.try_stop(StopReason.IDLE) is None
    sup.usage.held -= 1
    assert sup.try_stop(StopReason.IDLE) is not None


def pair(clock: FakeClock) -> tuple[dict[str, ModelSupervisor], dict[str, FakeLauncher],
                                    Admission]:
    """Two models that need the one GPU each, with admission between them."""
    models: dict[str, ModelSupervisor] = {}
    launchers: dict[str, FakeLauncher] = {}
    admission = Admission(lambda: models, lambda: {"gpu": 1.0}, lambda: None, clock,
                          drain_poll=0.001)
    for name in ("a", "b"):
        sup, launcher, _ = supervisor(clock, [1.0] * 3, name, admission.make_room,
                                      requires="{gpu: 1}")
        models[name], launchers[name] = sup, launcher
    return models, launchers, admission


async def test_eviction_stops_the_idle_model_before_the_new_one_starts() -> None:
    clock = FakeClock()
    models, launchers, _ = pair(clock)
    order: list[str] = []

    def record(event: Event) -> None:
        if isinstance(event, StateChanged):
            order.append(f"{event.model} {event.new}")

    for sup in models.values():
        sup.listeners.append(record)
    await models["a"].ensure_ready()
    clock.advance(10)  # past a's release grace: idle
    assert await models["b"].ensure_ready() is False
    assert models["a"].state is State.STOPPED
    assert models["a"].history.stop_reason is StopReason.EVICTED
    assert order.index("a stopped") < order.index("b ready")
    assert launchers["a"].calls == ["start", "stop"]


async def test_eviction_racing_a_start_of_the_victim() -> None:
    """b evicts a; a request for a arrives during a's stop: it waits for the stop, then
    for b's admission to end, and a starts only once b has been evicted in turn."""
    clock = FakeClock()
    models, launchers, _ = pair(clock)
    a, b = models["a"], models["b"]
    await a.ensure_ready()
    clock.advance(10)
    launchers["a"].stop_gate = asyncio.Event()
    start_b = asyncio.create_task(b.ensure_ready())
    await settle()
    assert a.state is State.STOPPING and b.state is State.STARTING
    start_a = asyncio.create_task(a.ensure_ready())  # joins a's eviction
    await settle()
    launchers["a"].stop_gate.set()
    assert await start_b is False
    assert b.state is State.READY
    for _ in range(200):  # a's admission waits for b's release grace (fake time) to pass
        await asyncio.sleep(0.001)
        if a.state is State.READY:
            break
        clock.advance(0.5)
    assert await start_a is False
    assert b.state is State.STOPPED and b.history.stop_reason is StopReason.EVICTED
    ready = [m for m in models.values() if m.state is State.READY]
    assert ready == [a]  # never both: the GPU is never given twice


async def test_no_room_while_the_holder_is_busy_until_the_deadline() -> None:
    clock = FakeClock()
    models, _, _ = pair(clock)
    a, b = models["a"], models["b"]
    await a.ensure_ready()
    a.observe(1, None, clock())  # a request in flight at a: a may not be evicted
    start_b = asyncio.create_task(b.ensure_ready())
    await settle()
    assert b.state is State.STARTING and a.state is State.READY
    clock.advance(b.spec.startup_timeout + 1)
    with pytest.raises(StartError) as info:
        await start_b
    assert info.value.reason is FailureReason.CAPACITY_TIMEOUT
    assert a.state is State.READY and b.state is State.FAILED
    assert b.history.failures_count() == 0  # capacity is not the model's fault


def test_transition_table_rejects_invalid_transitions() -> None:
    clock = FakeClock()
    sup, _, _ = supervisor(clock)
    for new in (State.READY, State.STARTING):
        assert new in TRANSITIONS[State.STOPPED]
    for invalid in (State.STOPPING, State.FAILED):
        with pytest.raises(InvalidTransition):
            sup._set_state(invalid)
    assert sup.state is State.STOPPED
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.STOPPING] == {State.STOPPED, State.READY}  # READY: called off
    assert State.STOPPING not in TRANSITIONS[State.STARTING]


async def test_wait_estimate_from_recent_starts() -> None:
    clock = FakeClock()
    durations = [float(s) for s in range(1, 12)]
    sup, launcher, _ = supervisor(clock, list(durations), startup_timeout=40)
    assert sup.expected_start_seconds() == 10.0  # before any start: startup_timeout / 4
    for _ in durations:
        await sup.ensure_ready()
        await sup.stop(StopReason.MANUAL)
    assert sup.snapshot()["recent_start_seconds"] == durations
    assert sup.expected_start_seconds() == 10.0  # p90 of 1..11
    launcher.start_gate = asyncio.Event()
    launcher.history = [5.0]
    waiter = asyncio.create_task(sup.ensure_ready())
    await settle()
    clock.advance(7.0)
    snap = sup.snapshot()
    assert snap["state"] == "starting" and snap["starting_seconds"] == 7.0
    assert snap["expected_start_seconds"] == 10.0
    assert sup._retry_after(10) == 3  # expected rest of the start
    assert sup._retry_after(2) == 2  # never above the old constant
    clock.advance(20.0)
    assert sup._retry_after(10) == 1  # overdue: at least 1
    launcher.start_gate.set()
    await waiter


async def test_queue_full_retry_after_uses_the_estimate() -> None:
    clock = FakeClock()
    sup, launcher, _ = supervisor(clock, [2.0], max_waiting=1, startup_timeout=8)
    launcher.start_gate = asyncio.Event()
    first = asyncio.create_task(sup.ensure_ready())
    await settle()
    with pytest.raises(StartError) as info:
        await sup.ensure_ready()
    assert info.value.reason is FailureReason.QUEUE_FULL
    assert info.value.retry_after == 2  # 8 / 4 expected, nothing measured yet
    launcher.start_gate.set()
    await first


async def test_inherit_copies_history_and_listeners() -> None:
    clock = FakeClock()
    old, _, _ = supervisor(clock, [1.0])
    await old.ensure_ready()
    new, _, _ = supervisor(clock)
    new.inherit(old)
    assert new.listeners == old.listeners and new.listeners is not old.listeners
    assert new.history.starts == 1 and new.history is not old.history
    new.listeners.clear()
    assert old.listeners  # not shared


def test_released_requests_protect_the_model_until_their_replays_are_seen() -> None:
    """Two requests released at t: their replays (connections from the replay address) are
    counted as they show, in flight (None) or already in TIME_WAIT (seconds since the close);
    once both were seen the model is no longer busy on their account. release_grace is only
    the upper bound."""
    usage = Usage(0.0, release_grace=3.0, total=HeldTotal(4096))
    src = "127.64.0.1"
    old, r1, r2 = (src, 40001), (src, 40002), (src, 40003)
    usage.released(10.0, 2, {old: 5.0})
    assert usage.busy(10.0)
    usage.observe(0, 0.0, 10.01, {old: 5.01, r1: None})  # an earlier replay does not count
    assert usage.busy(10.01) and usage.replays_pending == 2
    usage.observe(0, 0.0, 10.02, {old: 5.02, r1: 0.005, r2: 0.001})  # both came and went
    assert usage.replays_pending == 0 and not usage.busy(10.02)
    usage.released(20.0, 1, {})  # a replay that never shows: the upper bound
    usage.observe(0, None, 21.0, {})
    assert usage.busy(22.9) and not usage.busy(23.0)
    usage.released(30.0, 0, None)  # nobody held (preload, admin start): nothing to protect
    assert not usage.busy(30.0)
    usage.released(40.0, 1, None)  # no replay address (auth_request, IPv6): the bound alone
    usage.observe(0, 0.0, 40.5, {r1: None, r2: None})
    assert usage.busy(42.9) and not usage.busy(43.0)


@pytest.mark.parametrize(("now_seen", "counted"), [
    (None, True),    # the pair in TIME_WAIT at the release is in flight again: reused
    (0.01, True),    # ... closed again just now, long after the old close: reused
    (2.02, False),   # the same close as at the release (2 s old then): the old connection
    (1.8, False),    # within REUSED_AFTER of it (timer granularity): still the old one
])
def test_a_reused_time_wait_pair_is_a_new_connection(now_seen: float | None,
                                                     counted: bool) -> None:
    """The kernel reuses a loopback pair in TIME_WAIT for a new connect (tcp_tw_reuse): the
    replay on it counts once its close (or its being in flight) is newer than the old one."""
    usage = Usage(0.0, release_grace=3.0, total=HeldTotal(4096))
    pair = ("127.64.0.1", 40001)
    usage.released(10.0, 1, {pair: 2.0})  # closed at 8.0
    usage.observe(0, 0.0, 10.02, {pair: now_seen})
    assert (usage.replays_pending == 0) is counted
    assert usage.busy(10.02) is not counted


def test_a_late_replay_joins_the_replays_awaited() -> None:
    """A request whose 502 raced the start is told to replay to the ready model: it is
    awaited with the released ones (else on its own), so none of them is left unprotected."""
    usage = Usage(0.0, release_grace=3.0, total=HeldTotal(4096))
    src = "127.64.0.1"
    a, b, c = (src, 1), (src, 2), (src, 3)
    usage.released(10.0, 1, {})
    usage.replay_coming(10.5, lambda: {})
    usage.observe(0, 0.0, 10.6, {a: 0.0})  # one of two seen
    assert usage.busy(10.6) and usage.replays_pending == 2
    usage.observe(0, 0.0, 10.7, {a: 0.1, b: 0.0})
    assert not usage.busy(10.7)
    usage.replay_coming(20.0, lambda: {a: 9.4, b: 9.3})  # nothing awaited: alone
    usage.observe(0, 0.0, 20.1, {a: 9.5, b: 9.4})
    assert usage.busy(20.1) and usage.replays_pending == 1
    usage.observe(1, None, 20.2, {a: 9.6, b: 9.5, c: None})
    assert usage.replays_pending == 0 and usage.busy(20.2)  # in flight now: busy for that
    usage.observe(0, 0.0, 20.3, {a: 9.7, b: 9.6, c: 0.05})
    assert not usage.busy(20.3)


async def test_preload_and_admin_starts_hold_no_replays() -> None:
    """Only the requests nginx will replay protect a just-started model."""
    clock = FakeClock()
    sup, _, _ = supervisor(clock, [1.0])
    await sup.ensure_ready(replay=False)
    assert sup.usage.replays_pending == 0 and not sup.busy()
