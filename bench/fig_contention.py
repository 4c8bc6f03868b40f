"""Figure contention: 8 clients alternating two models that cannot run together.

One model at a time; A and B are fake models whose start takes 0.5 s (`--listen-delay`).
Each client sends requests one after another, alternating A and B, for 60 s (15 s quick).
Reported: requests served, model switches per minute (the starts recorded by the models),
latency p50/p99, and every non-200 by status. This is the behaviour without fairness rules
(`max_wait`, `min_dwell` are not implemented yet): a waiting model's start waits in admission
until the running one is idle, at most its startup_timeout (then 503 capacity_timeout).
"""

from __future__ import annotations

import collections
import sys
import threading
import time

from bench.driver import run_alone
from bench.harness import Row, Settings, dist_ms, figure, fresh_dir
from tests.stack import Stack, fake_model, free_port, kill_recorded, starts

CLIENTS = 8


@figure("contention", order=42)
def contention(settings: Settings) -> list[Row]:
    """8 clients alternating A/B (start 0.5 s each), one model at a time."""
    fig = "contention"
    seconds = 15.0 if settings.quick else 60.0
    tmp = fresh_dir(settings.out / "contention")
    records = {name: tmp / f"records-{name}.jsonl" for name in ("a", "b")}
    models = {name: {**fake_model(free_port(), "--listen-delay", "0.5", record=rec),
                     "idle_timeout": 0}
              for name, rec in records.items()}
    s = Stack(tmp, models)
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    try:
        with s:
            deadline = time.monotonic() + seconds

            def client(i: int) -> None:
                j = i
                while time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    status = s.get(f"/{'ab'[j % 2]}/c{i}/{j}", timeout=120).status
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        statuses[status] += 1
                    j += 1

            t0 = time.monotonic()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 180)
            elapsed = time.monotonic() - t0
            switches = sum(len(starts(rec)) for rec in records.values())
    finally:
        s.close()
        for rec in records.values():
            kill_recorded(rec)
    errors = {k: v for k, v in statuses.items() if k != 200}
    print(f"  contention: {sum(statuses.values())} requests, statuses {dict(statuses)}",
          file=sys.stderr)
    return [
        Row(fig, f"served (200) in {elapsed:.0f} s, {CLIENTS} clients", str(statuses[200])),
        Row(fig, "switches per minute (model starts)", f"{switches * 60 / elapsed:.1f}"),
        Row(fig, "latency, every request", dist_ms(latencies)),
        Row(fig, "errors (non-200 by status)", str(errors or 0), "0", not errors,
            note="without fairness rules"),
    ]


if __name__ == "__main__":
    sys.exit(run_alone("contention"))
