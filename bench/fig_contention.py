"""Figure contention: 8 clients alternating two models that cannot run together.

One model at a time; A and B are fake models whose start takes 0.5 s (`--listen-delay`).
Each client sends requests one after another, alternating A and B, for 60 s (15 s quick).
The same load runs once per set of fairness rules, one after another in one run:

* ``off`` — `max_wait: 0`, `min_dwell: 0`: the behaviour before fair turns (a waiting
  start evicts the running model at its first pause, waiting at most its startup_timeout);
* ``defaults`` — `max_wait: 120`, `min_dwell: 0` (the shipped defaults);
* ``min_dwell 2`` — the defaults plus `min_dwell: 2`: a model just started keeps its turn
  through pauses shorter than 1 s.

Reported for each: requests served, model switches per minute (the starts recorded by the
models), latency p50/p99, and every non-200 by status.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.driver import run_alone
from bench.harness import Row, Settings, dist_ms, figure, fresh_dir
from tests.stack import Stack, fake_model, free_port, kill_recorded, starts

CLIENTS = 8
RULES: dict[str, dict[str, float]] = {
    "off": {"max_wait": 0, "min_dwell": 0},
    "defaults": {},
    "min_dwell 2": {"min_dwell": 2},
}


@figure("contention", order=42)
def contention(settings: Settings) -> list[Row]:
    """8 clients alternating A/B (start 0.5 s each), one model at a time, per set of rules."""
    seconds = 15.0 if settings.quick else 60.0
    out = fresh_dir(settings.out / "contention")
    rows: list[Row] = []
    for label, rules in RULES.items():
        rows += _run(out / label.replace(" ", "-"), label, rules, seconds)
    return rows


def _run(tmp: Path, label: str, rules: dict[str, float], seconds: float) -> list[Row]:
    tmp.mkdir(parents=True)
    fig = "contention"
    records = {name: tmp / f"records-{name}.jsonl" for name in ("a", "b")}
    models: dict[str, dict[str, Any]] = {
        name: {**fake_model(free_port(), "--listen-delay", "0.5", record=rec),
               "idle_timeout": 0}
        for name, rec in records.items()}
    s = Stack(tmp, models, extra={"defaults": rules} if rules else {})
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
                    status = s.get(f"/{'ab'[j % 2]}/c{i}/{j}", timeout=300).status
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        statuses[status] += 1
                    j += 1

            t0 = time.monotonic()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 300)
            elapsed = time.monotonic() - t0
            switches = sum(len(starts(rec)) for rec in records.values())
    finally:
        s.close()
        for rec in records.values():
            kill_recorded(rec)
    errors = {k: v for k, v in statuses.items() if k != 200}
    print(f"  contention [{label}]: {sum(statuses.values())} requests, statuses "
          f"{dict(statuses)}, {switches} starts", file=sys.stderr)
    shown = ", ".join(f"{k} {v:g}" for k, v in rules.items()) or "max_wait 120, min_dwell 0"
    return [
        Row(fig, f"[{label}] served (200) in {elapsed:.0f} s, {CLIENTS} clients",
            str(statuses[200]), note=shown),
        Row(fig, f"[{label}] switches per minute (model starts)",
            f"{switches * 60 / elapsed:.1f}"),
        Row(fig, f"[{label}] latency, every request", dist_ms(latencies)),
        Row(fig, f"[{label}] errors (non-200 by status)", str(errors or 0), "0", not errors),
    ]


if __name__ == "__main__":
    sys.exit(run_alone("contention"))
