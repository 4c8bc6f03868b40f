"""Lifecycle through real nginx: idle stop, swaps, capacity, queue, crashes, adoption, stop."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

from tests.stack import (
    Stack,
    fake_model,
    free_port,
    pid_alive,
    port_open,
    stack,
    starts,
    wait_for,
)


class Stream(threading.Thread):
    """An SSE request through nginx, read to its end in the background."""

    def __init__(self, s: Stack, path: str) -> None:
        super().__init__(daemon=True)
        self.s, self.path = s, path
        self.events: list[str] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.started = threading.Event()

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.s.nginx_port, timeout=120)
            conn.request("GET", self.path)
            resp = conn.getresponse()
            self.status = resp.status
            while line := resp.readline():
                if line.startswith(b"data:"):
                    self.events.append(line[5:].strip().decode())
                    self.started.set()
            conn.close()
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()

    @property
    def complete(self) -> bool:
        return self.error is None and self.status == 200 and self.events[-1:] == ["[DONE]"]


def state(s: Stack, name: str) -> str:
    return str(s.status()[name]["state"])


def test_stream_outlives_idle_timeout(tmp_path: Path, record: Path) -> None:
    """A 60 s SSE stream with idle_timeout 5 completes; the model stops within 5 + 2 s after."""
    model = fake_model(free_port(), record=record)
    model["idle_timeout"] = 5
    with stack(tmp_path, {"m": model}) as s:
        st = Stream(s, "/m/stream?seconds=60&interval=1")
        st.start()
        st.join(90)
        ended = time.monotonic()
        assert st.complete, (st.status, st.error, st.events[-3:])
        assert len(st.events) >= 60
        assert len(starts(record)) == 1
        wait_for(lambda: state(s, "m") == "stopped", 10, "idle stop")
        stopped_after = time.monotonic() - ended
        assert stopped_after <= 5 + 2, stopped_after
        assert s.status()["m"]["stop_reason"] == "idle"


def test_idle_model_stops_and_comes_back(tmp_path: Path, record: Path) -> None:
    """Short requests keep a model alive; once idle it stops; the next request restarts it."""
    model = fake_model(free_port(), record=record)
    model["idle_timeout"] = 2
    with stack(tmp_path, {"m": model}) as s:
        for _ in range(6):  # 3 s of requests spaced below the idle timeout
            assert s.get("/m/x").status == 200
            time.sleep(0.5)
        assert state(s, "m") == "ready"
        wait_for(lambda: state(s, "m") == "stopped", 6, "idle stop")
        assert s.get("/m/again").status == 200
        assert len(starts(record)) == 2


def test_swap_a_to_b_when_a_is_idle(tmp_path: Path, record: Path) -> None:
    """One model at a time (no resources declared): a request for B swaps idle A out."""
    pa, pb = free_port(), free_port()
    models = {"a": fake_model(pa, record=record), "b": fake_model(pb, record=record)}
    with stack(tmp_path, models, extra={"release_grace": 0.2}) as s:
        assert s.get("/a/x").status == 200
        time.sleep(0.3)
        assert s.get("/b/x").status == 200
        st = s.status()
        assert (st["a"]["state"], st["b"]["state"]) == ("stopped", "ready")
        assert st["a"]["stop_reason"] == "evicted"
        assert not port_open(pa)


def test_swap_right_after_a_cold_start(tmp_path: Path, record: Path) -> None:
    """A's cold start released one held request; nginx replays it from A's replay address, the
    daemon sees it arrive, and A is no longer protected: B's start evicts A at once. With
    release_grace (the upper bound) far beyond B's startup_timeout, B could not start if the
    protection waited for the bound."""
    models = {"a": fake_model(free_port(), record=record),
              "b": {**fake_model(free_port(), record=record), "startup_timeout": 20}}
    with stack(tmp_path, models, extra={"release_grace": 600}) as s:
        assert s.get("/a/x").status == 200  # cold: held, released, replayed
        wait_for(lambda: s.status()["a"]["replays_pending"] == 0, 10, "a's replay to be seen")
        assert s.status()["a"]["state"] == "ready"
        assert s.get("/b/x").status == 200
        st = s.status()
        assert (st["a"]["state"], st["b"]["state"]) == ("stopped", "ready")
        assert st["a"]["stop_reason"] == "evicted"


def test_a_replay_the_daemon_has_not_seen_keeps_its_model(tmp_path: Path, record: Path) -> None:
    """Without a replay address (a model nginx reaches by name) the bound alone protects the
    replays: B's start waits for it and then fails, A keeps running."""
    models = {"a": {**fake_model(free_port(), record=record), "host": "localhost"},
              "b": {**fake_model(free_port(), record=record), "startup_timeout": 2}}
    with stack(tmp_path, models, extra={"release_grace": 600}) as s:
        assert s.get("/a/x").status == 200
        assert s.status()["a"]["replays_pending"] == 1  # never counted: protected for 600 s
        resp = s.get("/b/x")
        assert resp.status == 503 and "retry-after" in {k.lower() for k in resp.headers}, resp
        assert s.status()["a"]["state"] == "ready"


def test_swap_thrash_never_gives_502(tmp_path: Path, record: Path) -> None:
    """Many concurrent requests alternating two models that do not fit together: every
    replay reaches its model before the model can be evicted (no 502, no 504)."""
    models = {"a": fake_model(free_port(), record=record),
              "b": fake_model(free_port(), record=record)}
    with stack(tmp_path, models) as s:
        statuses: list[int] = []

        def client(i: int) -> None:
            for j in range(6):
                statuses.append(s.get(f"/{'ab'[(i + j) % 2]}/x").status)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(statuses) == 48
        assert set(statuses) <= {200, 503}, statuses  # 503: capacity_timeout, never 502
        assert statuses.count(200) > 0
        assert starts(record, models["a"]["port"]) and starts(record, models["b"]["port"])


def test_swap_waits_for_busy_model(tmp_path: Path, record: Path) -> None:
    """B waits while A streams; A's stream completes; then B runs."""
    pa, pb = free_port(), free_port()
    models = {"a": fake_model(pa, record=record), "b": fake_model(pb, record=record)}
    with stack(tmp_path, models, extra={"release_grace": 0.2}) as s:
        st = Stream(s, "/a/stream?seconds=3&interval=0.2")
        st.start()
        assert st.started.wait(10)
        t0 = time.monotonic()
        resp = s.get("/b/x")
        waited = time.monotonic() - t0
        st.join(30)
        assert st.complete, (st.status, st.error)
        assert resp.status == 200
        assert waited >= 2.0, waited  # B was held until A's stream ended
        assert state(s, "a") == "stopped" and state(s, "b") == "ready"


def test_busy_victim_past_startup_timeout_gives_503(tmp_path: Path, record: Path) -> None:
    """If A stays busy past B's startup_timeout, B's requests get 503 + Retry-After."""
    models = {"a": fake_model(free_port(), record=record),
              "b": fake_model(free_port(), record=record)}
    models["b"]["startup_timeout"] = 1
    with stack(tmp_path, models, extra={"release_grace": 0.2}) as s:
        st = Stream(s, "/a/stream?seconds=4&interval=0.2")
        st.start()
        assert st.started.wait(10)
        resp = s.get("/b/x")
        assert resp.status == 503
        assert resp.json()["error"] == "capacity_timeout"
        assert "retry-after" in resp.headers
        st.join(30)
        assert st.complete
        assert starts(record, models["b"]["port"]) == []


def test_pinned_model_is_never_evicted(tmp_path: Path, record: Path) -> None:
    """A pinned model keeps its share; others swap among the rest."""
    models = {
        "pin": {**fake_model(free_port(), record=record), "pinned": True, "requires": {"gpu": 40}},
        "a": {**fake_model(free_port(), record=record), "requires": {"gpu": 40}},
        "b": {**fake_model(free_port(), record=record), "requires": {"gpu": 40}},
    }
    extra = {"resources": {"gpu": 80}, "release_grace": 0.1}
    with stack(tmp_path, models, extra=extra) as s:
        for name in ("pin", "a", "b", "a", "b"):
            assert s.get(f"/{name}/x").status == 200
            time.sleep(0.2)
        st = s.status()
        assert st["pin"]["state"] == "ready" and st["pin"]["starts"] == 1
        assert st["b"]["state"] == "ready" and st["a"]["state"] == "stopped"


def test_model_that_does_not_fit_beside_a_running_pinned_model(tmp_path: Path,
                                                                record: Path) -> None:
    """One model at a time with a pinned model: while the pinned one runs, the other gets
    503 JSON + Retry-After within its startup_timeout and never starts; the pinned one
    keeps running. Once the pinned one is down (admin stop), the other starts."""
    models = {"pin": {**fake_model(free_port(), record=record), "pinned": True},
              "other": {**fake_model(free_port(), record=record), "startup_timeout": 3}}
    with stack(tmp_path, models) as s:
        assert s.get("/pin/x").status == 200
        resp = s.get("/other/x", timeout=3 + 2)  # never a hang: its startup_timeout bounds it
        assert resp.status == 503 and int(resp.headers["retry-after"]) >= 1
        assert resp.json()["error"] == "no_capacity"
        st = s.status()
        assert st["pin"]["state"] == "ready" and st["pin"]["starts"] == 1
        assert starts(record, models["other"]["port"]) == []
        assert s.direct("POST", "/_ms/models/pin/stop").status == 200
        assert s.get("/other/x").status == 200


def test_capacity_with_three_sizes(tmp_path: Path, record: Path) -> None:
    """80 units: small (20) + medium (30) fit together; large (60) stops a minimal set: medium
    alone frees enough, so small (the least recently used) keeps running."""
    models = {
        "small": {**fake_model(free_port(), record=record), "requires": {"gpu": 20}},
        "medium": {**fake_model(free_port(), record=record), "requires": {"gpu": 30}},
        "large": {**fake_model(free_port(), record=record), "requires": {"gpu": 60}},
    }
    extra = {"resources": {"gpu": 80}, "release_grace": 0.1}
    with stack(tmp_path, models, extra=extra) as s:
        assert s.get("/small/x").status == 200
        time.sleep(0.2)
        assert s.get("/medium/x").status == 200
        time.sleep(0.2)
        st = s.status()
        assert st["small"]["state"] == st["medium"]["state"] == "ready"
        # large needs 60: free is 30; stopping medium (30) is enough, small's stop is not needed.
        assert s.get("/large/x").status == 200
        st = s.status()
        assert [st[n]["state"] for n in ("small", "medium", "large")] == [
            "ready", "stopped", "ready"]
        # small (20) answers beside large (60): it never stopped.
        assert s.get("/small/x").status == 200
        st = s.status()
        assert st["large"]["state"] == "ready" and st["small"]["state"] == "ready"
        assert st["small"]["starts"] == 1


def test_queue_limit(tmp_path: Path, record: Path) -> None:
    """Beyond max_waiting held requests, 503 + Retry-After at once."""
    model = fake_model(free_port(), "--listen-delay", "2", record=record)
    model["max_waiting"] = 3
    with stack(tmp_path, {"m": model}) as s:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(s.get("/m/x").status))
                   for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: s.status()["m"]["held"] == 3, 5, "three held requests")
        t0 = time.monotonic()
        resp = s.get("/m/x")
        assert resp.status == 503 and time.monotonic() - t0 < 1
        assert resp.json()["error"] == "queue_full"
        assert "retry-after" in resp.headers
        for t in threads:
            t.join(30)
        assert results == [200, 200, 200]


def test_crash_then_restart_on_next_request(tmp_path: Path, record: Path) -> None:
    """A model that dies while ready is noticed at once; the next request starts it again."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        pid = s.get("/m/pid").json()["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: state(s, "m") == "stopped", 2, "crash noticed")
        st = s.status()["m"]
        assert st["stop_reason"] == "crash" and st["last_error"]["exit_status"] == -9
        assert s.get("/m/pid").json()["pid"] != pid


def test_crash_loop_backs_off_then_recovers(tmp_path: Path, record: Path) -> None:
    """3 failures in the window: 503 without a start until the backoff ends, then a try."""
    flag = tmp_path / "broken"
    flag.write_text("1")
    port = free_port()
    import sys

    script = (
        "import os,sys,subprocess\n"
        f"if os.path.exists({str(flag)!r}): sys.exit(5)\n"
        f"os.execv(sys.executable, [sys.executable, {str(Path(__file__).parent / 'fakemodel.py')!r},"
        f" '--port', '{port}', '--record', {str(record)!r}])\n"
    )
    model = {"command": [sys.executable, "-c", script], "port": port, "startup_timeout": 5,
             "crash_loop": {"max_failures": 3, "window": 60, "backoff": 3}}
    with stack(tmp_path, {"m": model}) as s:
        for _ in range(3):
            resp = s.get("/m/x")
            assert resp.status == 503 and resp.json()["error"] == "exited"
        resp = s.get("/m/x")
        assert resp.status == 503 and resp.json()["error"] == "crash_loop"
        assert 1 <= int(resp.headers["retry-after"]) <= 3
        st = s.status()["m"]
        assert st["starts"] == 3 and st["backoff_seconds"] > 0
        flag.unlink()
        wait_for(lambda: s.status()["m"]["backoff_seconds"] is None, 5, "backoff to end")
        assert s.get("/m/x").status == 200


def test_adoption_after_daemon_sigkill(tmp_path: Path, record: Path) -> None:
    """SIGKILL the daemon, restart it: running models are adopted, not started twice."""
    models = {"a": fake_model(free_port(), record=record),
              "b": fake_model(free_port(), record=record)}
    models["b"]["idle_timeout"] = 3
    with stack(tmp_path, models, extra={"resources": {"gpu": 2}}) as s:
        pa = s.get("/a/pid").json()["pid"]
        pb = s.get("/b/pid").json()["pid"]
        s.daemon.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        s.daemon.wait()  # type: ignore[union-attr]
        assert pid_alive(pa) and pid_alive(pb)
        s.start_daemon()
        st = s.status()
        assert st["a"]["state"] == st["b"]["state"] == "ready"
        assert (st["a"]["pid"], st["b"]["pid"]) == (pa, pb)
        assert s.get("/a/pid").json()["pid"] == pa
        assert len(starts(record)) == 2  # exactly one process per model
        # adopted models are stopped like any other: b by idleness
        wait_for(lambda: state(s, "b") == "stopped", 8, "adopted model idle stop")
        assert not pid_alive(pb)
        assert s.stop_daemon() == 0
        assert not pid_alive(pa)


def test_adoption_cleans_up_dead_and_unhealthy(tmp_path: Path, record: Path) -> None:
    """Recorded processes that died are forgotten; a restarted daemon starts afresh."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        pid = s.get("/m/pid").json()["pid"]
        s.daemon.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        s.daemon.wait()  # type: ignore[union-attr]
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 5, "model gone")
        s.start_daemon()
        assert state(s, "m") == "stopped"
        assert s.get("/m/pid").json()["pid"] != pid


def test_stop_signal_timeout_and_command(tmp_path: Path, record: Path) -> None:
    """stop_signal is sent; an ignoring model is SIGKILLed after stop_timeout; stop_command runs."""
    marker = tmp_path / "stop-ran"
    import sys

    models = {
        # ignores SIGTERM: a prompt exit proves SIGINT was what it got
        "sig": {**fake_model(free_port(), "--ignore-sigterm", record=record),
                "stop_signal": "SIGINT", "stop_timeout": 20},
        "stubborn": {**fake_model(free_port(), "--ignore-sigterm", record=record),
                     "stop_timeout": 1},
        "cmd": {**fake_model(free_port(), record=record),
                "stop_command": [sys.executable, "-c",
                                 "import os,signal,pathlib;"
                                 f"pathlib.Path({str(marker)!r}).write_text(os.environ['MODEL_STARTER_PID']);"
                                 "os.kill(int(os.environ['MODEL_STARTER_PID']), signal.SIGTERM)"]},
    }
    with stack(tmp_path, models, extra={"resources": {"gpu": 1}}) as s:
        pids = {n: s.get(f"/{n}/pid").json()["pid"] for n in models}
        t0 = time.monotonic()
        s.direct("POST", "/_ms/models/stubborn/stop")
        assert 1 <= time.monotonic() - t0 < 4
        assert not pid_alive(pids["stubborn"])
        s.direct("POST", "/_ms/models/cmd/stop")
        assert marker.read_text() == str(pids["cmd"])
        assert not pid_alive(pids["cmd"])
        t0 = time.monotonic()
        s.direct("POST", "/_ms/models/sig/stop")
        assert time.monotonic() - t0 < 5
        assert not pid_alive(pids["sig"])


def test_preload_starts_at_daemon_start(tmp_path: Path, record: Path) -> None:
    """preload: true models start with the daemon."""
    models = {"p": {**fake_model(free_port(), record=record), "preload": True},
              "q": fake_model(free_port(), record=record)}
    with stack(tmp_path, models, extra={"resources": {"gpu": 1}}) as s:
        wait_for(lambda: state(s, "p") == "ready", 10, "preload")
        assert state(s, "q") == "stopped"
        assert len(starts(record)) == 1


def test_status_json_shape(tmp_path: Path, record: Path) -> None:
    """The status lists state, pid, activity, counters and backoff for every model."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        s.get("/m/x")
        m = s.status()["m"]
        for key in ("state", "pid", "launcher", "port", "since", "last_activity", "in_flight",
                    "held", "starts", "last_error", "backoff_seconds"):
            assert key in m
        out = s.cli("status", "--json")
        assert json.loads(out.stdout)["models"][0]["name"] == "m"


def test_held_request_outlives_default_timeouts(tmp_path: Path, record: Path) -> None:
    """A start slower than Sanic's and nginx's 60 s defaults: the held request still gets
    the model's answer (both timeouts are raised from startup_timeout)."""
    model = fake_model(free_port(), "--listen-delay", "65", record=record)
    model["startup_timeout"] = 120
    with stack(tmp_path, {"m": model}) as s:
        t0 = time.monotonic()
        resp = s.call("POST", "/m/v1/slow-start", body=b"x", timeout=150)
        assert resp.status == 200, resp
        assert resp.json()["body_len"] == 1
        assert time.monotonic() - t0 >= 65
