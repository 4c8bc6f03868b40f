"""Requests/s with wrk, and the CPU the processes involved (and everything else) used meanwhile."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.harness import CLK_TCK, cpu_seconds

WRK = shutil.which("wrk") or "/usr/bin/wrk"


def nginx_workers(master: int) -> list[int]:
    try:
        with open(f"/proc/{master}/task/{master}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(entry))
        return pids


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    errors: int  # non-2xx/3xx responses plus socket errors
    cpu_per_request: float  # nginx worker CPU seconds per request
    busy: float  # nginx worker CPU seconds per wall second (1.0: it is the bottleneck)


def run_wrk(url: str, seconds: int, connections: int, worker: int,
            script: str | None = None) -> WrkResult:
    """`script`: a wrk Lua file (e.g. a POST with a body)."""
    cpu0 = cpu_seconds(worker)
    t0 = time.monotonic()
    lua = ["-s", script] if script else []
    out = subprocess.run(
        [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", *lua, url],
        capture_output=True, text=True, timeout=seconds + 30,
    )
    cpu1 = cpu_seconds(worker)
    wall = time.monotonic() - t0
    text = out.stdout
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr}{text}")
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if rps is None or total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s*(\d+)", text))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock is not None:
        errors += sum(int(g) for g in sock.groups())
    requests = int(total.group(1))
    cpu = cpu1 - cpu0
    return WrkResult(float(rps.group(1)), requests, errors, cpu / max(1, requests), cpu / wall)


def host_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle, iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / CLK_TCK


def tree_pids(root: int) -> list[int]:
    """root and its descendants (via /proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [root]
    while todo and len(out) < 10_000:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    return out


@dataclass(frozen=True)
class Measured:
    wrk: WrkResult
    cpu: dict[int, float]  # CPU seconds per watched pid during the run
    foreign: float  # CPU s per wall s used by processes outside the run (and not wrk)


def run_wrk_watched(url: str, seconds: int, conns: int, worker: int, watched: Sequence[int]
                    ) -> Measured:
    """run_wrk, plus the CPU of `watched` processes and of everything else on the host:
    host busy time - watched processes - wrk (our child) = someone else sharing the CPUs."""
    def cpu_of(pid: int) -> float:
        try:
            return cpu_seconds(pid)
        except OSError:
            return 0.0

    before = {pid: cpu_of(pid) for pid in watched}
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    host0 = host_busy_seconds()
    t0 = time.monotonic()
    res = run_wrk(url, seconds, conns, worker)
    wall = time.monotonic() - t0
    host1 = host_busy_seconds()
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {pid: cpu_of(pid) - before[pid] for pid in watched}
    wrk_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
    foreign = (host1 - host0 - sum(cpu.values()) - wrk_cpu) / wall
    return Measured(res, cpu, foreign)
