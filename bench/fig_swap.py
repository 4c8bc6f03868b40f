"""Figure swap: the overhead of stopping one model to start another."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.driver import run_alone
from bench.harness import Row, Settings, dist_ms, figure, fresh_dir, interpreter_startup, ms, percentile
from tests.stack import Stack, fake_model, free_port, kill_recorded, read_records, wait_for
from tests.stack import starts as starts_of


class EventReader:
    """The daemon's SSE stream GET /_ms/events, read by a thread into a list."""

    def __init__(self, port: int) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        self._conn.request("GET", "/_ms/events")
        self._resp = self._conn.getresponse()
        if self._resp.status != 200:
            raise RuntimeError(f"/_ms/events: {self._resp.status}")
        self._thread = threading.Thread(target=self._read, name="events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # close() from another thread may make http.client fail in odd ways: all mean "closed".
        with contextlib.suppress(OSError, ValueError, AttributeError, http.client.HTTPException):
            for _ in range(10_000_000):  # bounded; ends when the stream closes
                line = self._resp.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    with self._lock:
                        self.events.append(event)

    def find(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
             ) -> dict[str, Any]:
        def look() -> dict[str, Any] | None:
            with self._lock:
                return next((e for e in self.events if pred(e)), None)
        found: dict[str, Any] = wait_for(look, timeout, "an event from /_ms/events")
        return found

    def close(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()
        self._thread.join(5)


def state_change(model: str, new: str, since: float) -> Callable[[dict[str, Any]], bool]:
    """Matches the /_ms/events state event of `model` entering `new` at or after `since`."""
    def match(e: dict[str, Any]) -> bool:
        return bool(e["event"] == "state" and e["model"] == model and e["new"] == new
                and e["time"] >= since)
    return match


@dataclass(frozen=True)
class SwapSample:
    total: float  # client: request to the cold model sent -> response read
    stop: float  # the warm model's ready->stopping -> stopping->stopped (daemon events)
    spawn_to_ready: float  # the cold model's own record
    to_stopping: float  # request sent -> the warm model's ready->stopping
    stopped_to_script: float  # warm model stopped -> the cold model's script's first line
    after_ready: float  # the cold model's first healthy answer -> response read

    @property
    def overhead(self) -> float:
        return self.total - self.stop - self.spawn_to_ready


@figure("swap", order=40)
def swap(settings: Settings) -> list[Row]:
    """Swap overhead. No `resources` (one model at a time), two fake models A and B,
    `release_grace: 0.2`. Each round requests the model that is not running through nginx,
    0.4 s after the last request to the running one (idle, past its release grace), so the
    daemon must stop the warm model before it can start the cold one. Overhead = the
    client's latency - the warm model's stop (its ready→stopping and stopping→stopped
    events on GET /_ms/events) - the cold model's own spawn_to_ready (its record). Like
    cold-start's "added" latency it counts the interpreter start before the model script's
    first line; that is also shown subtracted. Directions alternate (A→B, B→A)."""
    fig = "swap"
    n = 10 if settings.quick else 24
    tmp = fresh_dir(settings.out / "swap")
    records = {name: tmp / f"records-{name}.jsonl" for name in ("a", "b")}
    models = {name: {**fake_model(free_port(), record=rec), "idle_timeout": 0}
              for name, rec in records.items()}
    s = Stack(tmp, models, extra={"release_grace": 0.2})
    samples: list[SwapSample] = []
    try:
        with s:
            events = EventReader(s.daemon_port)
            try:
                s.get("/a/warmup")  # first start and one untimed swap: imports, caches
                time.sleep(0.4)
                s.get("/b/warmup")
                current = "b"
                for i in range(n):
                    time.sleep(0.4)  # > release_grace: the running model is idle
                    target = "a" if current == "b" else "b"
                    wall0 = time.time()
                    t0 = time.perf_counter()
                    resp = s.get(f"/{target}/swap/{i}")
                    total = time.perf_counter() - t0
                    wall1 = time.time()
                    if resp.status != 200:
                        raise RuntimeError(f"swap {i}: {resp.status} {resp.body!r}")
                    stopping = events.find(state_change(current, "stopping", wall0))
                    stopped = events.find(state_change(current, "stopped", wall0))
                    pid = int(resp.json()["pid"])
                    recs = [r for r in read_records(records[target]) if r.get("pid") == pid]
                    start = next(r for r in recs if r["event"] == "start")
                    ready = next(r for r in recs if r["event"] == "ready")
                    samples.append(SwapSample(
                        total=total,
                        stop=stopped["time"] - stopping["time"],
                        spawn_to_ready=float(ready["spawn_to_ready"]),
                        to_stopping=stopping["time"] - wall0,
                        stopped_to_script=float(start["time"]) - stopped["time"],
                        after_ready=wall1 - float(ready["time"]),
                    ))
                    x = samples[-1]
                    print(f"  swap {i + 1}/{n} {current}->{target}: total {ms(total)}, stop "
                          f"{ms(x.stop)}, spawn_to_ready {ms(x.spawn_to_ready)}, overhead "
                          f"{ms(x.overhead)}", file=sys.stderr)
                    current = target
            finally:
                events.close()
            starts = {name: len(starts_of(rec))
                      for name, rec in records.items()}
    finally:
        s.close()
        for rec in records.values():
            kill_recorded(rec)
    first_line, _ = interpreter_startup(10 if settings.quick else 20)
    py_start = statistics.median(first_line)
    over = [x.overhead for x in samples]
    med = statistics.median
    p50 = percentile(over, 50)
    return [
        Row(fig, f"swap request through nginx, client view ({n} swaps, alternating)",
            dist_ms([x.total for x in samples])),
        Row(fig, "warm model's stop (ready->stopping->stopped events)",
            dist_ms([x.stop for x in samples]), note="SIGTERM to the group -> exit seen"),
        Row(fig, "cold model's own spawn_to_ready", dist_ms([x.spawn_to_ready for x in samples])),
        Row(fig, "overhead = total - stop - spawn_to_ready, p50", ms(p50), "≤ 50 ms", p50 <= 0.050,
            note=f"max {ms(max(over))}; counts the interpreter start as overhead"),
        Row(fig, "overhead minus python startup", dist_ms([o - py_start for o in over]),
            note=f"python spawn -> first line of a script, median {ms(py_start)}"),
        Row(fig, "phase: request sent -> warm model stopping, median",
            ms(med([x.to_stopping for x in samples])),
            note="nginx 502 -> daemon -> admission picks the victim"),
        Row(fig, "phase: warm model stopped -> cold model's script first line, median",
            ms(med([x.stopped_to_script for x in samples])),
            note="admission done -> spawn -> interpreter start"),
        Row(fig, "phase: cold model ready -> client has response, median",
            ms(med([x.after_ready for x in samples])), note="504 -> nginx replay -> model"),
        Row(fig, "starts per model (records)", ", ".join(f"{k} {v}" for k, v in starts.items()),
            note="one per swap into it, plus the warm-up"),
    ]


if __name__ == "__main__":
    sys.exit(run_alone("swap"))
