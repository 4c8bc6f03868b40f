"""The sleep state (issue 16): config rules, the supervisor's sleep and single-flight wake,
the pure "sleep a victim instead of stopping it" rule, idle sleeps, and admission."""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from model_starter.admission import Admission
from model_starter.config import ConfigError, capacity_warnings, parse_config
from model_starter.events import FailureReason, State, StateChanged, Stopped, StopReason
from model_starter.launchers import StartError
from model_starter.lifecycle_spec import HttpAction, Phase, SleepPreset
from model_starter.monitor import ActivityMonitor
from model_starter.policy import Holder, choose_victims
from model_starter.supervisor import ModelSupervisor
from tests.stack import fake_model, free_port, read_records, request, stack, starts, wait_for
from tests.test_supervisor import FakeClock, FakeHealth, FakeLauncher, settle, supervisor

VLLM = "{preset: vllm, after: 5}"

# -- config ---------------------------------------------------------------------------------


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", environ={})
    return info.value.problems


def test_presets_parse() -> None:
    cfg = parse_config(
        "resources: {gpu: 2, ram: 64}\nmodels:\n"
        "  v:\n    command: [vllm, serve]\n    port: 9001\n    mode: auth_request\n"
        "    requires: {gpu: 1}\n    sleep: {preset: vllm, after: 60, requires: {ram: 16}}\n"
        "  l:\n    command: [llama-server, --sleep-idle-seconds, '30']\n    port: 9002\n"
        "    requires: {gpu: 1}\n    sleep: {preset: llamacpp, after: 30}\n"
        "  h:\n    command: [x]\n    port: 9003\n    mode: auth_request\n"
        "    sleep: {after: 9, sleep: /s, wake: {method: PUT, path: /w}, timeout: 3}\n",
        "c.yaml", environ={})
    v, ll, h = (cfg.models[n].sleeps for n in ("v", "l", "h"))
    assert v is not None and ll is not None and h is not None
    assert (v.preset, v.after, dict(v.requires)) == (SleepPreset.VLLM, 60.0, {"ram": 16.0})
    assert v.sleep == HttpAction("/sleep?level=1", "POST", None, 60.0)
    assert v.wake is not None and v.wake.path == "/wake_up" and not v.self_waking
    assert ll.sleep is None and ll.wake is None and ll.self_waking
    assert h.wake == HttpAction("/w", "PUT", None, 3.0)
    assert parse_config("models:\n  m:\n    command: [x]\n    port: 1\n", "c.yaml",
                        environ={}).models["m"].sleeps is None


@pytest.mark.parametrize(("model", "expected"), [
    # the per-engine rule: an engine that does not wake itself needs auth_request mode
    ("    command: [vllm]\n    port: 9001\n    sleep: {preset: vllm, after: 5}\n",
     "c.yaml:6: models.m.sleep: preset vllm needs `mode: auth_request`"),
    ("    command: [llama-server]\n    port: 9001\n    sleep: {preset: llamacpp, after: 5}\n",
     "c.yaml:6: models.m.sleep: preset llamacpp: add `--sleep-idle-seconds 5`"),
    ("    command: [llama-server, --sleep-idle-seconds=9]\n    port: 9001\n"
     "    sleep: {preset: llamacpp, after: 5}\n",
     "c.yaml:6: models.m.sleep: after: 5 must equal the engine's --sleep-idle-seconds 9"),
    ("    launcher: v2\n    mode: auth_request\n    sleep: {preset: vllm, after: 5}\n",
     "c.yaml:4: models.m.sleep: only for launcher: process"),
    ("    command: [x]\n    port: 9001\n    mode: auth_request\n    sleep: {after: 5}\n",
     "c.yaml:7: models.m.sleep: missing required key 'sleep'"),
    ("    command: [x]\n    port: 9001\n    mode: auth_request\n"
     "    sleep: {preset: vllm, after: 5, requires: {vram: 1}}\n",
     "c.yaml:7: models.m.sleep.requires.vram: unknown resource"),
    ("    command: [x]\n    port: 9001\n    mode: auth_request\n    sleep: {preset: vllm}\n",
     "c.yaml:7: models.m.sleep: missing required key 'after'"),
])
def test_sleep_config_errors(model: str, expected: str) -> None:
    got = problems(f"resources: {{gpu: 1}}\nmodels:\n  m:\n{model}")
    assert any(p.startswith(expected) for p in got), got


def test_check_warns_when_the_stop_comes_before_the_sleep() -> None:
    cfg = parse_config("models:\n  m:\n    command: [x]\n    port: 9001\n    mode: auth_request\n"
                       "    idle_timeout: 60\n    sleep: {preset: vllm, after: 60}\n", "c.yaml",
                       environ={})
    assert capacity_warnings(cfg) == [
        "c.yaml: models.m: sleep.after 60 is not below idle_timeout 60: the model is stopped "
        "before it would sleep"]


# -- the supervisor ---------------------------------------------------------------------------


class Actions:
    """The model's sleep API as the supervisor calls it; `fail` makes a phase fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.gate: asyncio.Event | None = None

    async def __call__(self, phase: Phase, action: HttpAction) -> str | None:
        self.calls.append(f"{phase} {action.path}")
        if self.gate is not None:
            await self.gate.wait()
        return "HTTP 500: boom" if phase in self.fail else None


def sleepy(clock: FakeClock, **fields: Any) -> tuple[ModelSupervisor, Any, list[Any], Actions]:
    fields.setdefault("mode", "auth_request")
    fields.setdefault("sleep", VLLM)
    sup, launcher, events = supervisor(clock, **fields)
    sup.run_action = actions = Actions()
    return sup, launcher, events, actions


async def test_sleep_keeps_the_process_and_a_wake_is_single_flight() -> None:
    clock = FakeClock()
    sup, launcher, events, actions = sleepy(clock)
    await sup.ensure_ready()
    pid = launcher.pid
    clock.advance(10)  # idle past release_grace
    task = sup.try_sleep(StopReason.IDLE)
    assert task is not None and sup.state is State.SLEEPING
    await task
    assert sup.state is State.SLEEPING and sup.asleep and launcher.pid == pid
    assert actions.calls == ["sleep /sleep?level=1"]
    assert sup.snapshot()["sleep"]["asleep"] is True
    actions.gate = asyncio.Event()
    waiters = [asyncio.create_task(sup.ensure_ready()) for _ in range(20)]
    await settle()
    assert sup.state is State.WAKING and sup.held == 20
    actions.gate.set()
    assert await asyncio.gather(*waiters) == [False] * 20  # released like a start: 504s
    assert actions.calls == ["sleep /sleep?level=1", "wake /wake_up"]  # one wake for all
    assert sup.state is State.READY and not sup.asleep and launcher.pid == pid
    assert launcher.calls == ["start"]  # never stopped nor restarted
    states = [(e.old, e.new) for e in events if isinstance(e, StateChanged)]
    assert states[-3:] == [(State.READY, State.SLEEPING), (State.SLEEPING, State.WAKING),
                           (State.WAKING, State.READY)]
    assert sup.busy()  # the released requests' replays are protected like after a start


async def test_sleep_refused_while_busy_or_without_sleep() -> None:
    clock = FakeClock()
    sup, _, _, _ = sleepy(clock)
    await sup.ensure_ready()
    assert sup.try_sleep(StopReason.IDLE) is None  # just released: busy
    plain, _, _ = supervisor(clock, name="p")
    await plain.ensure_ready()
    clock.advance(10)
    assert plain.try_sleep(StopReason.IDLE) is None


async def test_a_failed_sleep_stops_the_model_instead() -> None:
    clock = FakeClock()
    sup, launcher, events, actions = sleepy(clock)
    await sup.ensure_ready()
    clock.advance(10)
    actions.fail.add("sleep")
    task = sup.try_sleep(StopReason.IDLE)
    assert task is not None
    await task
    assert sup.state is State.STOPPED and launcher.calls == ["start", "stop"]
    assert [e.reason for e in events if isinstance(e, Stopped)] == [StopReason.IDLE]


async def test_a_failed_wake_fails_the_held_requests_and_stops_the_process() -> None:
    clock = FakeClock()
    sup, launcher, _, actions = sleepy(clock)
    await sup.ensure_ready()
    clock.advance(10)
    task = sup.try_sleep(StopReason.IDLE)
    assert task is not None
    await task
    actions.fail.add("wake")
    results = await asyncio.gather(*(sup.ensure_ready() for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, StartError) and r.reason is FailureReason.WAKE_FAILED
               for r in results), results
    assert sup.state is State.FAILED and launcher.calls == ["start", "stop"]
    assert sup.holds() is None


async def test_a_sleeping_model_can_be_stopped_and_a_crash_while_asleep_is_seen() -> None:
    clock = FakeClock()
    sup, launcher, events, _ = sleepy(clock)
    await sup.ensure_ready()
    clock.advance(10)
    await sup.try_sleep(StopReason.IDLE)  # type: ignore[misc]
    await sup.stop(StopReason.MANUAL)
    assert sup.state is State.STOPPED and not sup.asleep
    await sup.ensure_ready()
    clock.advance(10)
    await sup.try_sleep(StopReason.IDLE)  # type: ignore[misc]
    launcher.exit(9)
    await settle()
    assert sup.state is State.STOPPED
    assert [e.reason for e in events if isinstance(e, Stopped)] == [StopReason.MANUAL,
                                                                     StopReason.CRASH]


async def test_idle_monitor_sleeps_after_sleep_after_and_stops_after_idle_timeout() -> None:
    clock = FakeClock()
    sup, launcher, _, _ = sleepy(clock, idle_timeout=100)
    monitor = ActivityMonitor(lambda: {"m": sup}, dict, lambda: None, lambda: None, clock)
    await sup.ensure_ready()
    clock.advance(4)
    monitor.stop_idle()
    assert sup.state is State.READY
    clock.advance(2)  # idle 6 s (the last activity was the release): past after: 5
    monitor.stop_idle()
    await settle()
    assert sup.state is State.SLEEPING and sup.asleep and launcher.calls == ["start"]
    clock.advance(100)
    monitor.stop_idle()
    await settle()
    assert sup.state is State.STOPPED and launcher.calls == ["start", "stop"]


async def test_a_self_waking_engine_is_woken_in_the_books() -> None:
    """llama.cpp: no actions; a request seen at its port wakes it (through admission)."""
    clock = FakeClock()
    spec = parse_config("models:\n  m:\n    command: [llama-server, --sleep-idle-seconds, '5']\n"
                        "    port: 9001\n    sleep: {preset: llamacpp, after: 5}\n", "c.yaml",
                        environ={}).models["m"]
    launcher = FakeLauncher(clock)
    sup = ModelSupervisor(spec, launcher, FakeHealth(launcher), clock=clock)
    sup.run_action = actions = Actions()
    await sup.ensure_ready()
    clock.advance(10)
    await sup.try_sleep(StopReason.IDLE)  # type: ignore[misc]
    assert sup.asleep and actions.calls == []
    now = clock()
    assert not sup.request_since_asleep(0, None, now + 5)
    assert not sup.request_since_asleep(0, 6.0, now + 5)  # closed before it fell asleep
    assert sup.request_since_asleep(0, 4.0, now + 5)  # a short request since
    assert sup.request_since_asleep(1, None, now + 5)  # one in flight
    sup.engine_woke()
    await settle()
    assert sup.state is State.READY and actions.calls == [] and launcher.calls == ["start"]
    assert not sup.request_since_asleep(1, None, now + 5)  # awake


# -- capacity ---------------------------------------------------------------------------------


def hs(name: str, gpu: float, last: float, asleep: dict[str, float] | None = None,
       **kw: Any) -> Holder:
    return Holder(name, {"gpu": gpu}, last, sleep_holds=asleep, **kw)


CAP = {"gpu": 80.0, "ram": 32.0}


@pytest.mark.parametrize(("needs", "holders", "stop", "sleep"), [
    # sleeping frees the GPU and costs RAM: sleep instead of stop
    (60, [hs("a", 40, 1, {"ram": 16})], ("a",), ("a",)),
    # a model that cannot sleep is stopped
    (60, [hs("a", 40, 1)], ("a",), ()),
    # asleep it would still hold too much of the GPU: stopped
    (60, [hs("a", 40, 1, {"gpu": 30})], ("a",), ()),
    # asleep it needs more RAM than is free: stopped
    (60, [hs("a", 40, 1, {"ram": 40})], ("a",), ()),
    # two victims, RAM for one sleeper: the first in stop order sleeps, the other stops
    (80, [hs("a", 40, 1, {"ram": 20}), hs("b", 40, 2, {"ram": 20})], ("a", "b"), ("a",)),
    # both fit asleep
    (80, [hs("a", 40, 1, {"ram": 10}), hs("b", 40, 2, {"ram": 10})], ("a", "b"), ("a", "b")),
    # an asleep holder (its holds are its sleep's, it cannot sleep again) is stopped
    (80, [hs("a", 40, 1, {"ram": 8}), Holder("z", {"gpu": 40, "ram": 8}, 0)],
     ("z", "a"), ("a",)),
])
def test_sleep_a_victim_instead_of_stopping_it(
    needs: float, holders: list[Holder], stop: tuple[str, ...], sleep: tuple[str, ...],
) -> None:
    """A victim sleeps instead of stopping when the new model still fits with it asleep
    (every resource within capacity); otherwise it stops as before."""
    got = choose_victims({"gpu": needs}, CAP, holders)
    assert (got.names, got.sleep, got.fits) == (stop, sleep, True)


async def test_admission_sleeps_a_victim_to_make_room() -> None:
    clock = FakeClock()
    models: dict[str, ModelSupervisor] = {}
    admission = Admission(lambda: models, lambda: {"gpu": 1.0}, lambda: None, clock)
    a, a_launcher, _, actions = sleepy(clock, name="a", requires="{gpu: 1}",
                                       before_start=admission.make_room)
    b, _, _ = supervisor(clock, name="b", requires="{gpu: 1}", before_start=admission.make_room)
    models.update(a=a, b=b)
    await a.ensure_ready()
    clock.advance(10)
    await b.ensure_ready()
    assert (a.state, b.state) == (State.SLEEPING, State.READY)
    assert a_launcher.calls == ["start"] and actions.calls == ["sleep /sleep?level=1"]
    assert dict(a.holds() or {}) == {} and admission.holders(b, clock())[0].holds == {}
    clock.advance(10)
    await a.ensure_ready()  # the wake makes room in turn: b stops (it cannot sleep)
    assert (a.state, b.state) == (State.READY, State.STOPPED)
    assert a_launcher.calls == ["start"]


# -- through real nginx (auth_request mode), a model process that speaks vLLM's sleep API ---


def events_of(record: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in read_records(record) if r["event"] == kind]


def sleeping_model(port: int, record: Path, **fields: Any) -> dict[str, Any]:
    return {**fake_model(port, "--sleep-mode", record=record), "mode": "auth_request",
            "sleep": {"preset": "vllm", "after": 1}, **fields}


def test_idle_model_sleeps_and_one_wake_serves_a_herd(tmp_path: Path, record: Path) -> None:
    """Idle past `sleep.after`: asleep with the same process; 20 concurrent requests wake it
    once, all answered by that process."""
    models = {"m": sleeping_model(free_port(), record)}
    with stack(tmp_path, models, extra={"release_grace": 0.2}) as s:
        first = s.get("/m/echo")
        assert first.status == 200, first
        pid = first.json()["pid"]
        wait_for(lambda: s.status()["m"]["state"] == "sleeping"
                 and s.status()["m"]["sleep"]["asleep"], 15, "the model to fall asleep")
        assert s.status()["m"]["pid"] == pid and len(events_of(record, "sleep")) == 1
        assert request(s.models["m"]["port"], "GET", "/echo").status == 503  # refuses asleep
        assert s.call("POST", "/m/wake_up").status == 403  # the daemon's API, not the clients'
        assert s.call("POST", "/m/sleep?level=1").status == 403
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda i: s.call("POST", f"/m/echo?i={i}", body=b"x"),
                                    range(20)))
        assert [a.status for a in answers] == [200] * 20, answers
        assert {a.json()["pid"] for a in answers} == {pid}
        assert len(events_of(record, "wake")) == 1  # single flight
        assert len(starts(record)) == 1
        assert s.status()["m"]["state"] == "ready"


def test_making_room_sleeps_instead_of_stopping(tmp_path: Path, record: Path) -> None:
    """Capacity for one awake model: starting b puts a to sleep (its process stays, holding
    RAM); a request for a wakes it, and b (which cannot sleep) is stopped to make room."""
    a_port, b_port = free_port(), free_port()
    models = {
        "a": sleeping_model(a_port, record, requires={"gpu": 1},
                            sleep={"preset": "vllm", "after": 3600, "requires": {"ram": 1}}),
        "b": {**fake_model(b_port, record=record), "mode": "auth_request",
              "requires": {"gpu": 1}},
    }
    extra = {"resources": {"gpu": 1, "ram": 1}, "release_grace": 0.2}
    with stack(tmp_path, models, extra=extra) as s:
        a_pid = s.get("/a/echo").json()["pid"]
        assert s.get("/b/echo").status == 200
        st = s.status()
        assert (st["a"]["state"], st["a"]["pid"], st["a"]["holds"]) == ("sleeping", a_pid,
                                                                         {"ram": 1.0})
        assert st["b"]["state"] == "ready"
        assert len(events_of(record, "sleep")) == 1 and len(starts(record, a_port)) == 1
        again = s.get("/a/echo")
        assert again.status == 200 and again.json()["pid"] == a_pid
        st = s.status()
        assert (st["a"]["state"], st["b"]["state"]) == ("ready", "stopped")
        assert st["b"]["stop_reason"] == "evicted"
        assert len(events_of(record, "wake")) == 1 and len(starts(record, a_port)) == 1


def test_dashboard_shows_a_sleeping_model_and_what_it_holds(tmp_path: Path, record: Path) -> None:
    """The row shows "sleeping" live, and the capacity bars what it holds asleep."""
    from tests.browser import chromium, console_errors, text_of, wait_text

    models = {"m": sleeping_model(free_port(), record, requires={"gpu": 1},
                                  sleep={"preset": "vllm", "after": 1, "requires": {"ram": 1}})}
    extra = {"resources": {"gpu": 1, "ram": 1}, "release_grace": 0.2}
    with stack(tmp_path, models, extra=extra) as s, chromium(tmp_path / "browser") as driver:
        driver.get(f"http://127.0.0.1:{s.daemon_port}/_ms/ui")
        wait_text(driver, "#conn-text", "live")
        assert s.get("/m/echo").status == 200
        row = 'tr[data-model="m"] [data-col=state] .state'
        wait_text(driver, row, "sleeping")
        wait_text(driver, '[data-resource="ram"]', "m 1 (sleeping)")
        assert "nothing running" in text_of(driver, '[data-resource="gpu"]')
        assert s.get("/m/echo").status == 200
        wait_text(driver, '[data-resource="gpu"]', "m 1 (")
        assert console_errors(driver) == []


def test_self_waking_engine_in_error_page_mode(tmp_path: Path, record: Path) -> None:
    """llama.cpp's rule: nginx sends the request to the sleeping engine, which wakes itself;
    the daemon sees it in flight at the port and counts the model awake (same process)."""
    port = free_port()
    # A reload shorter than a scan: the daemon sees the finished request (its closed
    # connection), not one in flight.
    models = {"m": {**fake_model(port, "--sleep-idle-seconds", "1", "--wake-seconds", "0",
                                 record=record),
                    "sleep": {"preset": "llamacpp", "after": 1}}}
    with stack(tmp_path, models, extra={"release_grace": 0.2}) as s:
        pid = s.get("/m/echo").json()["pid"]
        wait_for(lambda: s.status()["m"]["state"] == "sleeping", 15, "the model to sleep")
        assert request(port, "GET", "/props").json()["is_sleeping"] is True
        woken = s.get("/m/echo")  # straight to the port: the engine reloads, then answers
        assert woken.status == 200 and woken.json()["pid"] == pid
        log = tmp_path / "daemon.log"  # the daemon counted it awake (it may sleep again since)
        wait_for(lambda: "model=m state waking -> ready" in log.read_text(), 10,
                 "the daemon to count the engine awake")
        assert len(events_of(record, "wake")) == 1 and len(starts(record)) == 1


def test_restarted_daemon_adopts_and_wakes_a_sleeping_model(tmp_path: Path, record: Path) -> None:
    """The daemon dies (SIGKILL) while its model sleeps: the next daemon adopts the process
    and sends it `wake` once, so requests never meet the engine asleep."""
    port = free_port()
    models = {"m": sleeping_model(port, record, sleep={"preset": "vllm", "after": 1})}
    with stack(tmp_path, models, extra={"release_grace": 0.2}) as s:
        pid = s.get("/m/echo").json()["pid"]
        wait_for(lambda: s.status()["m"]["sleep"]["asleep"], 15, "the model to fall asleep")
        s.stop_daemon(signal.SIGKILL)
        assert request(port, "GET", "/is_sleeping").json()["is_sleeping"] is True
        s.start_daemon()
        wait_for(lambda: len(events_of(record, "wake")) == 1, 15, "the adopted model's wake")
        assert s.status()["m"]["pid"] == pid
        answer = s.get("/m/echo")
        assert answer.status == 200 and answer.json()["pid"] == pid
        assert len(starts(record)) == 1
