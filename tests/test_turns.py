"""Fair turns: the pure rules (`turns`) and admission applying them on a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from model_starter.admission import Admission
from model_starter.events import FailureReason, State, StopReason
from model_starter.launchers import StartError
from model_starter.supervisor import ModelSupervisor
from model_starter.turns import DWELL_IDLE, dwelling, turn_due, turn_retry_after, wait_limit
from tests.test_supervisor import FakeClock, FakeLauncher, settle, supervisor


@pytest.mark.parametrize(
    ("max_wait", "startup_timeout", "limit"),
    [(0, 600, 600), (120, 600, 120), (120, 10, 10), (0.5, 10, 0.5)],
)
def test_wait_limit(max_wait: float, startup_timeout: float, limit: float) -> None:
    assert wait_limit(max_wait, startup_timeout) == limit


@pytest.mark.parametrize(
    ("waited", "max_wait", "due"),
    [(0, 0, False), (1000, 0, False), (59.9, 120, False), (60, 120, True), (0.3, 0.5, True)],
)
def test_turn_due(waited: float, max_wait: float, due: bool) -> None:
    assert turn_due(waited, max_wait) is due


@pytest.mark.parametrize(
    ("ready_for", "idle_for", "min_dwell", "due", "keeps_turn"),
    [
        (1, 0, 0, False, False),  # off
        (1, 0, 10, False, True),  # just started and in use
        (1, DWELL_IDLE - 0.01, 10, False, True),  # a pause between requests
        (1, DWELL_IDLE, 10, False, False),  # idle: nobody uses it
        (10, 0, 10, False, False),  # dwelt long enough
        (1, 0, 10, True, False),  # the waiting model's turn is due
    ],
)
def test_dwelling(ready_for: float, idle_for: float, min_dwell: float, due: bool,
                  keeps_turn: bool) -> None:
    assert dwelling(ready_for, idle_for, min_dwell, due) is keeps_turn


@pytest.mark.parametrize(("limit", "retry"), [(0.5, 1), (4, 2), (120, 10), (600, 10)])
def test_turn_retry_after(limit: float, retry: int) -> None:
    assert turn_retry_after(limit) == retry


def pair(clock: FakeClock, **fields: Any) -> tuple[dict[str, ModelSupervisor],
                                                    dict[str, FakeLauncher], Admission]:
    """Two models that need the one GPU each (`fields` for both), with admission between."""
    models: dict[str, ModelSupervisor] = {}
    launchers: dict[str, FakeLauncher] = {}
    admission = Admission(lambda: models, lambda: {"gpu": 1.0}, lambda: None, clock,
                          drain_poll=0.001)
    for name in ("a", "b"):
        sup, launcher, _ = supervisor(clock, [1.0] * 3, name, admission.make_room,
                                      requires="{gpu: 1}", **fields)
        models[name], launchers[name] = sup, launcher
    return models, launchers, admission


async def run_until(task: asyncio.Task[Any], clock: FakeClock, step: float,
                    each: Any = None, limit: int = 2000) -> None:
    """Advance the fake clock by `step` until `task` is done (calling `each()` every step)."""
    for _ in range(limit):
        await asyncio.sleep(0.001)
        if task.done():
            return
        if each is not None:
            each()
        clock.advance(step)
    raise AssertionError("the task never finished")


async def test_a_busy_model_keeps_the_room_and_the_waiting_start_gets_503_at_max_wait() -> None:
    clock = FakeClock()
    models, launchers, _ = pair(clock, max_wait=4)
    a, b = models["a"], models["b"]
    await a.ensure_ready(replay=False)
    a.usage.in_flight = 1  # a stream that never ends
    t0 = clock()
    start_b = asyncio.create_task(b.ensure_ready())
    await run_until(start_b, clock, 0.5)
    with pytest.raises(StartError) as err:
        start_b.result()
    assert err.value.reason is FailureReason.CAPACITY_TIMEOUT
    assert err.value.retry_after == 2
    assert "max_wait 4" in err.value.detail
    assert 4 <= clock() - t0 <= 5
    assert a.state is State.READY and launchers["a"].calls == ["start"]
    assert "start" not in launchers["b"].calls


async def test_without_max_wait_the_start_waits_up_to_startup_timeout() -> None:
    clock = FakeClock()
    models, _, _ = pair(clock, max_wait=0, startup_timeout=20)
    await models["a"].ensure_ready(replay=False)
    models["a"].usage.in_flight = 1
    t0 = clock()
    start_b = asyncio.create_task(models["b"].ensure_ready())
    await run_until(start_b, clock, 1)
    assert isinstance(start_b.exception(), StartError)
    assert 20 <= clock() - t0 <= 21


async def test_a_pause_ends_the_turn_without_min_dwell() -> None:
    clock = FakeClock()
    models, launchers, _ = pair(clock)
    a, b = models["a"], models["b"]
    await a.ensure_ready(replay=False)
    a.touch()  # used a moment ago, nothing in flight now
    assert await b.ensure_ready() is False
    assert a.state is State.STOPPED and a.history.stop_reason is StopReason.EVICTED
    assert launchers["b"].calls == ["start"]


async def test_min_dwell_keeps_a_model_in_use_until_idle() -> None:
    clock = FakeClock()
    models, _, _ = pair(clock, min_dwell=30, max_wait=100)
    a, b = models["a"], models["b"]
    await a.ensure_ready(replay=False)
    start_b = asyncio.create_task(b.ensure_ready())
    for _ in range(5):  # requests keep coming, with pauses between them
        a.touch()
        clock.advance(DWELL_IDLE / 2)
        await settle()
        assert a.state is State.READY and b.state is State.STARTING
    await run_until(start_b, clock, 0.25)  # then nobody uses it: evicted once idle
    assert await start_b is False
    assert a.state is State.STOPPED and b.state is State.READY


async def test_min_dwell_yields_once_the_waiting_turn_is_due() -> None:
    clock = FakeClock()
    models, _, _ = pair(clock, min_dwell=300, max_wait=10)
    a, b = models["a"], models["b"]
    await a.ensure_ready(replay=False)
    t0 = clock()
    start_b = asyncio.create_task(b.ensure_ready())
    await run_until(start_b, clock, 0.25, each=a.touch)  # a is used all the time, with pauses
    assert await start_b is False
    assert 5 <= clock() - t0 <= 6.5  # half of max_wait, then b's own 1 s start
    assert a.state is State.STOPPED and b.state is State.READY


async def test_requests_the_daemon_sees_wait_once_the_turn_is_over() -> None:
    """auth_request mode: once b's turn is due, new requests for a wait (a drains), and
    go on once a was stopped; before that they pass."""
    clock = FakeClock()
    models, _, admission = pair(clock, max_wait=10)
    a, b = models["a"], models["b"]
    await a.ensure_ready(replay=False)
    a.usage.in_flight = 1
    start_b = asyncio.create_task(b.ensure_ready())
    await settle()
    await asyncio.wait_for(admission.wait_turn(a), 1)  # not due yet: passes
    clock.advance(5)  # half of max_wait
    await asyncio.sleep(0.01)
    request_a = asyncio.create_task(admission.wait_turn(a))
    await asyncio.sleep(0.01)
    assert not request_a.done() and a.state is State.READY
    a.usage.in_flight = 0  # its last request ended: the turn passes to b
    await asyncio.wait_for(request_a, 1)
    assert await start_b is False
    assert a.state is State.STOPPED and b.state is State.READY
    await asyncio.wait_for(admission.wait_turn(b), 1)  # nobody waits: b's requests pass


def trio(clock: FakeClock, **fields: Any) -> dict[str, ModelSupervisor]:
    models: dict[str, ModelSupervisor] = {}
    admission = Admission(lambda: models, lambda: {"gpu": 1.0}, lambda: None, clock,
                          drain_poll=0.001)
    for name in ("a", "b", "c"):
        models[name] = supervisor(clock, [1.0] * 3, name, admission.make_room,
                                  requires="{gpu: 1}", **fields.get(name, {}))[0]
    return models


async def test_waiting_starts_take_turns_oldest_first() -> None:
    clock = FakeClock()
    models = trio(clock)
    a, b, c = models["a"], models["b"], models["c"]
    await a.ensure_ready(replay=False)
    a.usage.in_flight = 1
    start_b = asyncio.create_task(b.ensure_ready())
    await settle()
    start_c = asyncio.create_task(c.ensure_ready())
    await settle()
    a.usage.in_flight = 0
    assert await start_b is False  # b waited longer: its turn comes first
    assert b.state is State.READY and c.state is State.STARTING and not c.admitted
    await run_until(start_c, clock, 0.5)  # b's replay protection ends: then c
    assert await start_c is False
    assert [m.state for m in (a, b, c)] == [State.STOPPED, State.STOPPED, State.READY]


async def test_a_start_queued_behind_another_still_gets_503_at_its_max_wait() -> None:
    clock = FakeClock()
    models = trio(clock, c={"max_wait": 0.2})
    a, b, c = models["a"], models["b"], models["c"]
    await a.ensure_ready(replay=False)
    a.usage.in_flight = 1
    start_b = asyncio.create_task(b.ensure_ready())
    await settle()
    with pytest.raises(StartError) as err:  # waits behind b's start: bounded all the same
        await asyncio.wait_for(c.ensure_ready(), 5)
    assert err.value.reason is FailureReason.CAPACITY_TIMEOUT
    assert "busy: a" in err.value.detail
    a.usage.in_flight = 0
    assert await start_b is False
