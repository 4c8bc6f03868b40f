"""Figure swap-cases: swap overhead by the state of the running model (issue: no fixed grace).

Three cases, one model at a time, the default `release_grace` (3 s, now only a bound):

* idle: A answered its last request 3.5 s ago (past even the old fixed grace);
* just started: A's cold start answered 0.3 s ago (its released request was replayed);
* busy: A streams a response that ends 1 s after B is requested.

Overhead = B's latency - A's remaining work (busy case: the stream's end as the client saw
it) - A's stop (its ready->stopping->stopped events) - B's own spawn_to_ready (its record).
Every swap into a model is also that model's cold start, which the next round swaps away.
"""

from __future__ import annotations

import http.client
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.driver import run_alone
from bench.fig_swap import EventReader, state_change
from bench.harness import (
    Row,
    Settings,
    dist_ms,
    figure,
    fresh_dir,
    interpreter_startup,
    percentile,
)
from tests.stack import Stack, fake_model, free_port, kill_recorded, read_records

TARGET = 0.050


class StreamEnd(threading.Thread):
    """A 1 s stream from the running model; `first` is set at its first event, `end` is the
    perf_counter time its last byte arrived."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.first = threading.Event()
        self.end = 0.0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", self.path)
            resp = conn.getresponse()
            resp.readline()
            self.first.set()
            resp.read()
            self.end = time.perf_counter()
        finally:
            conn.close()


def _case(s: Stack, events: EventReader, records: dict[str, Path], case: str, n: int,
          current: str) -> tuple[list[float], list[float], str]:
    """n swaps in `case`; returns (overheads, totals, the model running at the end)."""
    overheads, totals = [], []
    for i in range(n):
        target = "a" if current == "b" else "b"
        stream: StreamEnd | None = None
        if case == "idle":
            time.sleep(3.5)
        elif case == "just-started":
            time.sleep(0.3)
        else:
            stream = StreamEnd(s.nginx_port, f"/{current}/stream?seconds=1&interval=0.05")
            stream.start()
            stream.first.wait(10)
        wall0, t0 = time.time(), time.perf_counter()
        resp = s.get(f"/{target}/{case}/{i}")
        total = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"{case} swap {i}: {resp.status} {resp.body!r}")
        remaining = 0.0
        if stream is not None:
            stream.join(30)
            remaining = max(0.0, stream.end - t0)
        stopping = events.find(state_change(current, "stopping", wall0))
        stopped = events.find(state_change(current, "stopped", wall0))
        pid = int(resp.json()["pid"])
        ready = next(r for r in read_records(records[target])
                     if r.get("pid") == pid and r["event"] == "ready")
        over = total - remaining - (stopped["time"] - stopping["time"]) \
            - float(ready["spawn_to_ready"])
        overheads.append(over)
        totals.append(total)
        print(f"  {case} {i + 1}/{n} {current}->{target}: total {total * 1000:.1f} ms, "
              f"overhead {over * 1000:.1f} ms", file=sys.stderr)
        current = target
    return overheads, totals, current


@figure("swap-cases", order=41)
def swap_cases(settings: Settings) -> list[Row]:
    """Swap overhead with A idle, A answered 0.3 s after its cold start, A busy 1 s more."""
    fig = "swap-cases"
    n = 6 if settings.quick else 16
    tmp = fresh_dir(settings.out / "swap-cases")
    records = {name: tmp / f"records-{name}.jsonl" for name in ("a", "b")}
    models = {name: {**fake_model(free_port(), record=rec), "idle_timeout": 0}
              for name, rec in records.items()}
    s = Stack(tmp, models)
    rows: list[Row] = []
    results: dict[str, list[float]] = {}
    try:
        with s:
            events = EventReader(s.daemon_port)
            try:
                s.get("/a/warmup")
                time.sleep(0.3)
                s.get("/b/warmup")  # one untimed swap: imports, caches
                current = "b"
                for case in ("idle", "just-started", "busy"):
                    over, totals, current = _case(s, events, records, case, n, current)
                    results[case] = over
                    p50 = percentile(over, 50)
                    rows.append(Row(fig, f"{case}: overhead ({n} swaps)", dist_ms(over),
                                    "p50 ≤ 50 ms", p50 <= TARGET,
                                    note=f"B's latency p50 {statistics.median(totals) * 1000:.0f}"
                                         " ms; counts B's interpreter start"))
            finally:
                events.close()
    finally:
        s.close()
        for rec in records.values():
            kill_recorded(rec)
    first_line, _ = interpreter_startup(10 if settings.quick else 20)
    py = statistics.median(first_line)
    for case, over in results.items():
        rows.append(Row(fig, f"{case}: overhead minus python startup", dist_ms(
            [o - py for o in over]), note=f"python spawn -> first line, median {py * 1000:.0f} ms"))
    idle, just = (statistics.median(results[c]) for c in ("idle", "just-started"))
    rows.append(Row(fig, "just-started minus idle, p50", f"{(just - idle) * 1000:.1f} ms",
                    "≤ 10 ms", just - idle <= 0.010, note="no fixed grace after a cold start"))
    return rows


if __name__ == "__main__":
    sys.exit(run_alone("swap-cases"))
