"""Soak: mixed traffic from many concurrent clients through real nginx and the real daemon,
over four fake models that must be swapped in and out, for minutes; then every error is
classified and the daemon's open file descriptors and RSS must be flat.

    .venv/bin/python bench/soak.py --minutes 30 [--clients 50] [--output bench/RESULTS.md]

`run_soak(minutes, workdir, clients)` is importable (tests/test_soak.py runs 2 minutes).

Setup: four `tests/fakemodel.py` models (`idle_timeout` 2, 3, 4 and 5 s), `resources:
{slots: 2}` and each model `requires: {slots: 1}`, so at most two run at once. Traffic: each
client loops, with 20-100 ms think time, over GET (echo), POST (a random body up to 256 KiB,
its SHA-256 checked on the model's side), SSE streams of 1-3 s (every event and the final
`[DONE]` must arrive) and /slow requests of 0.2-1.5 s. Which model: time is cut into steps
that repeat 5 s, 5 s, 10 s; step k uses models k and k+1 (mod 4), every third step (10 s)
only model k; in the last second of a step half of the requests already go to the next
step's models. Step boundaries force swaps (a model comes in while the one leaving is still
busy), and the one-model steps let the other model idle until its idle_timeout stops it.

Errors are classified by status code, the daemon's JSON `error` field (or what else the body
was), model and whether it is expected. Expected is only what the README documents as the
outcome of normal operation under forced swaps: 503 `capacity_timeout` (Lifecycle, Capacity:
a start waits for busy models "at most the starting model's `startup_timeout` (then 503)").
Everything else (an nginx 502 or 504, a daemon 503 of another kind, a wrong body, a stream
cut short, a client timeout, an answer from another model's process) is unexpected.

Flatness: at the end of a warm-up (15 % of the run, 10-60 s) and again at the end, traffic
pauses, in-flight requests finish, every model is stopped through the admin API and after
1 s the daemon's open FDs (/proc/PID/fd) and VmRSS are read: the two quiet points compare
the same state. Tolerances: FDs end - start ≤ 20, RSS end - start ≤ 20 MB. Maxima during
the run come from 1 s samples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import cpu_seconds, percentile, proc_status_kb, repo_relative  # noqa: E402
from model_starter.protocol import CLIENT_HEADER  # noqa: E402
from tests.stack import (  # noqa: E402
    Stack,
    fake_model,
    free_port,
    kill_recorded,
    read_records,
    starts,
)

MODELS = ("m0", "m1", "m2", "m3")
IDLE_TIMEOUTS = {"m0": 2, "m1": 3, "m2": 4, "m3": 5}
# Steps of (seconds, how many models); step g uses models g, g+1, ... (mod 4).
SCHEDULE = ((5.0, 2), (5.0, 2), (10.0, 1))
EARLY_SECONDS = 1.0  # the last second of a step: half of the requests go to the next one
KINDS = (("get", 0.45), ("post", 0.25), ("stream", 0.15), ("slow", 0.15))
THINK = (0.02, 0.1)
REQUEST_TIMEOUT = 90.0
STREAM_INTERVAL = 0.1
EXPECTED: dict[tuple[int, str], str] = {
    (503, "capacity_timeout"): "README Lifecycle/Capacity: a start waits for busy models at "
                               "most its startup_timeout, then 503",
    (200, "stream cut, connected while its model was stopping"):
        "README Lifecycle/Idle stop: a request that connects in the instant between the last "
        "scan and the model closing its port is cut as by any stop",
}
FD_TOLERANCE = 20
RSS_TOLERANCE_MB = 20.0
QUIET_WAIT = 120.0  # at most this long for in-flight requests to finish at a quiet point


def step_models(step: int) -> list[str]:
    count = SCHEDULE[step % len(SCHEDULE)][1]
    return [MODELS[(step + i) % len(MODELS)] for i in range(count)]


# --- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorClass:
    status: int  # 0: no HTTP answer (client-side exception)
    error: str  # the daemon's JSON "error", or what the answer was
    model: str
    expected: bool


@dataclass
class SoakReport:
    minutes: float
    clients: int
    duration: float = 0.0
    warmup: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # per kind, all outcomes
    latencies: dict[str, list[float]] = field(default_factory=dict)  # per kind, 200s only
    errors: Counter[ErrorClass] = field(default_factory=Counter)
    error_samples: dict[ErrorClass, str] = field(default_factory=dict)
    streams_started: int = 0
    streams_completed: int = 0
    streams_cut_stopping: int = 0  # cut in the documented instant of a stop (EXPECTED)
    fd_start: int = 0
    fd_end: int = 0
    fd_max: int = 0
    rss_start_kb: int = 0
    rss_end_kb: int = 0
    rss_max_kb: int = 0
    starts: dict[str, int] = field(default_factory=dict)  # per model, from its record file
    stops: Counter[str] = field(default_factory=Counter)  # by reason, from /_ms/events
    start_failures: Counter[str] = field(default_factory=Counter)  # by reason
    daemon_cpu: float = 0.0  # CPU seconds the daemon used during the run
    daemon_log_errors: list[str] = field(default_factory=list)  # tracebacks, unexpected errors
    leftovers: list[int] = field(default_factory=list)  # model processes alive after the run

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def unexpected_errors(self) -> int:
        return sum(n for e, n in self.errors.items() if not e.expected)

    @property
    def expected_errors(self) -> int:
        return sum(n for e, n in self.errors.items() if e.expected)

    @property
    def fd_flat(self) -> bool:
        return self.fd_end - self.fd_start <= FD_TOLERANCE

    @property
    def rss_flat(self) -> bool:
        return (self.rss_end_kb - self.rss_start_kb) / 1024 <= RSS_TOLERANCE_MB

    @property
    def streams_ok(self) -> bool:
        return self.streams_completed + self.streams_cut_stopping == self.streams_started

    @property
    def ok(self) -> bool:
        return (self.unexpected_errors == 0 and self.streams_ok and self.fd_flat and self.rss_flat
                and not self.daemon_log_errors and not self.leftovers)

    def markdown(self) -> str:
        def yes(flag: bool) -> str:
            return "yes" if flag else "**NO**"

        swaps = self.stops.get("evicted", 0)
        lines = [
            f"{self.clients} clients, {self.duration / 60:.1f} min of traffic "
            f"(warm-up {self.warmup:.0f} s), {self.total:,} requests "
            f"({self.total / max(1.0, self.duration):.0f}/s): "
            + ", ".join(f"{k} {n:,}" for k, n in sorted(self.requests.items())),
            "",
            "| Check | Value | Target | OK |",
            "|---|---|---|---|",
            f"| unexpected errors | {self.unexpected_errors} | 0 | {yes(self.unexpected_errors == 0)} |",
            f"| expected errors (documented) | {self.expected_errors} |  |  |",
            f"| SSE streams complete (+ cut while their model was stopping) | "
            f"{self.streams_completed} (+ {self.streams_cut_stopping}) / {self.streams_started} | all "
            f"| {yes(self.streams_ok)} |",
            f"| daemon open FDs, quiet start → end (max during run) | {self.fd_start} → "
            f"{self.fd_end} ({self.fd_max}) | end - start ≤ {FD_TOLERANCE} | {yes(self.fd_flat)} |",
            f"| daemon RSS, quiet start → end (max during run) | {self.rss_start_kb / 1024:.1f} → "
            f"{self.rss_end_kb / 1024:.1f} MB ({self.rss_max_kb / 1024:.1f} MB) "
            f"| end - start ≤ {RSS_TOLERANCE_MB:g} MB | {yes(self.rss_flat)} |",
            f"| daemon log: tracebacks / unexpected errors | {len(self.daemon_log_errors)} | 0 "
            f"| {yes(not self.daemon_log_errors)} |",
            f"| model processes left after the run | {len(self.leftovers)} | 0 "
            f"| {yes(not self.leftovers)} |",
            "| model starts (record files) | "
            + ", ".join(f"{m} {n}" for m, n in sorted(self.starts.items()))
            + f", total {sum(self.starts.values())} |  |  |",
            "| model stops by reason (/_ms/events) | "
            + (", ".join(f"{r} {n}" for r, n in sorted(self.stops.items())) or "none")
            + f" ({swaps} evictions = forced swaps) |  |  |",
            "| failed starts by reason (/_ms/events) | "
            + (", ".join(f"{r} {n}" for r, n in sorted(self.start_failures.items())) or "none")
            + " |  |  |",
            f"| daemon CPU | {self.daemon_cpu:.1f} s ({100 * self.daemon_cpu / max(1.0, self.duration):.1f} "
            "% of one core) |  |  |",
        ]
        for kind in sorted(self.latencies):
            values = self.latencies[kind]
            if values:
                lines.append(f"| latency {kind} (200s), p50 / p99 / max | "
                             f"{_ms(percentile(values, 50))} / {_ms(percentile(values, 99))} / "
                             f"{_ms(max(values))} |  |  |")
        if self.errors:
            lines += ["", "| Status | Error | Model | Expected | Count | Example |",
                      "|---|---|---|---|---|---|"]
            for e, n in sorted(self.errors.items(), key=lambda kv: -kv[1]):
                sample = self.error_samples.get(e, "").replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {e.status} | {e.error} | {e.model} | {'yes' if e.expected else 'no'} "
                             f"| {n} | {sample[:200]} |")
        if self.daemon_log_errors:
            lines += ["", "Daemon log:", "", "```", *self.daemon_log_errors[:10], "```"]
        if self.leftovers:
            lines += ["", f"Model processes still alive after the run (killed): {self.leftovers}"]
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# --- the daemon, seen from outside ---------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    return proc_status_kb(pid, "VmRSS")


_LOG_PROBLEM = re.compile(r"Traceback|unexpected error|listener failed|scan failed|"
                          r"housekeeping failed")


def daemon_log_problems(text: str) -> list[str]:
    """Lines of the daemon's log that say the daemon itself went wrong (not a model)."""
    return [line for line in text.splitlines() if _LOG_PROBLEM.search(line)]


# --- traffic -------------------------------------------------------------------------------


class Traffic:
    def __init__(self, stack: Stack, report: SoakReport, clients: int, seed: int,
                 records: dict[str, Path]) -> None:
        self.stack = stack
        self.records = records
        self.report = report
        self.clients = clients
        self.seed = seed
        self.base = f"http://127.0.0.1:{stack.nginx_port}"
        self.admin = f"http://127.0.0.1:{stack.daemon_port}/_ms"
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.stopping: dict[str, list[tuple[float, float]]] = {m: [] for m in MODELS}
        self.cuts: list[tuple[str, int, str]] = []  # (model, request n, sample): see check_cuts
        self.t0 = 0.0
        self.end = 0.0
        self.seq = 0
        self.pids: dict[str, set[int]] = {m: set() for m in MODELS}

    # which model and what request

    def pick_model(self, rng: random.Random) -> str:
        cycle = sum(d for d, _ in SCHEDULE)
        n, t = divmod(time.monotonic() - self.t0, cycle)
        step = int(n) * len(SCHEDULE)
        for duration, _ in SCHEDULE:
            if t < duration:
                break
            t -= duration
            step += 1
        if t >= duration - EARLY_SECONDS and rng.random() < 0.5:
            step += 1  # the end of a step: half of the requests already go to the next one
        return rng.choice(step_models(step))

    @staticmethod
    def pick_kind(rng: random.Random) -> str:
        x = rng.random()
        for kind, weight in KINDS:
            if x < weight:
                return kind
            x -= weight
        return KINDS[-1][0]

    def record_error(self, kind: str, model: str, status: int, error: str, sample: str) -> None:
        e = ErrorClass(status, error, model, (status, error) in EXPECTED)
        self.report.errors[e] += 1
        self.report.error_samples.setdefault(e, f"{kind}: {sample}")

    async def classify(self, kind: str, model: str, resp: aiohttp.ClientResponse) -> None:
        body = await resp.read()
        error = "non-JSON body"
        with contextlib.suppress(ValueError, AttributeError):
            error = str(json.loads(body).get("error", "JSON without error field"))
        if error == "non-JSON body" and b"<html>" in body[:200].lower():
            title = re.search(rb"<title>(.*?)</title>", body, re.I | re.S)
            error = "nginx page: " + (title.group(1).decode(errors="replace") if title else "?")
        self.record_error(kind, model, resp.status, error, body[:300].decode(errors="replace"))

    # one request of each kind; each returns whether it succeeded

    async def one(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        model = self.pick_model(rng)
        kind = self.pick_kind(rng)
        self.seq += 1
        n = self.seq
        self.report.requests[kind] += 1
        t0 = time.monotonic()
        try:
            ok = await getattr(self, f"do_{kind}")(session, rng, model, n)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.record_error(kind, model, 0, f"client {type(exc).__name__}", str(exc))
            ok = False
        if ok:
            self.report.latencies.setdefault(kind, []).append(time.monotonic() - t0)

    def check_echo(self, kind: str, model: str, obj: Any, method: str, path: str,
                   digest: str | None = None, length: int = 0) -> bool:
        problems = []
        if obj.get("method") != method:
            problems.append(f"method {obj.get('method')!r}")
        if obj.get("path") != path:
            problems.append(f"path {obj.get('path')!r} != {path!r}")
        if digest is not None and (obj.get("body_sha256") != digest or obj.get("body_len") != length):
            problems.append(f"body {obj.get('body_len')} bytes, sha256 differs")
        if problems:
            self.record_error(kind, model, 200, "wrong answer", "; ".join(problems))
            return False
        self.pids[model].add(int(obj["pid"]))
        return True

    async def echo(self, session: aiohttp.ClientSession, kind: str, model: str, method: str,
                   path: str, body: bytes | None = None) -> bool:
        """One request the fake model echoes back; checked down to the body's hash."""
        headers = {"Content-Type": "application/octet-stream"} if body is not None else None
        async with session.request(method, f"{self.base}/{model}{path}", data=body,
                                   headers=headers) as resp:
            if resp.status != 200:
                await self.classify(kind, model, resp)
                return False
            if body is None:
                return self.check_echo(kind, model, await resp.json(), method, path)
            return self.check_echo(kind, model, await resp.json(), method, path,
                                   hashlib.sha256(body).hexdigest(), len(body))

    async def do_get(self, session: aiohttp.ClientSession, rng: random.Random, model: str,
                     n: int) -> bool:
        return await self.echo(session, "get", model, "GET", f"/echo/{n}?q={rng.randrange(1000)}")

    async def do_post(self, session: aiohttp.ClientSession, rng: random.Random, model: str,
                      n: int) -> bool:
        body = rng.randbytes(rng.choice((0, rng.randrange(1, 4096), rng.randrange(1, 256 * 1024))))
        return await self.echo(session, "post", model, "POST", f"/v1/upload/{n}", body)

    async def do_slow(self, session: aiohttp.ClientSession, rng: random.Random, model: str,
                      n: int) -> bool:
        path = f"/slow?seconds={rng.uniform(0.2, 1.5):.2f}&n={n}"
        return await self.echo(session, "slow", model, "GET", path)

    async def do_stream(self, session: aiohttp.ClientSession, rng: random.Random, model: str,
                        n: int) -> bool:
        seconds = rng.uniform(1.0, 3.0)
        path = f"/stream?seconds={seconds:.2f}&interval={STREAM_INTERVAL}&n={n}"
        self.report.streams_started += 1
        async with session.get(f"{self.base}/{model}{path}") as resp:
            if resp.status != 200:
                await self.classify("stream", model, resp)
                return False
            events = 0
            done = False
            try:
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        if line[6:].strip() == b"[DONE]":
                            done = True
                        else:
                            events += 1
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                self.cuts.append((model, n, f"after {events} events: {exc}"))
                return False
            pid = resp.headers.get("X-Fakemodel-Pid")
        wanted = int(seconds / STREAM_INTERVAL) - 1
        if not done or events < wanted:
            self.record_error("stream", model, 200, "stream incomplete",
                              f"{events} events (want ≥ {wanted}), [DONE] {'seen' if done else 'missing'}")
            return False
        if pid is not None:
            self.pids[model].add(int(pid))
        self.report.streams_completed += 1
        return True

    async def client(self, session: aiohttp.ClientSession, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        while time.monotonic() < self.end:
            await self.gate.wait()
            if time.monotonic() >= self.end:
                break
            self.in_flight += 1
            try:
                await self.one(session, rng)
            finally:
                self.in_flight -= 1
            await asyncio.sleep(rng.uniform(*THINK))

    # the daemon's state

    async def quiet_point(self, session: aiohttp.ClientSession) -> tuple[int, int]:
        """Pause traffic, let in-flight requests finish, stop every model; (FDs, RSS kB)."""
        assert self.stack.daemon is not None
        self.gate.clear()
        deadline = time.monotonic() + QUIET_WAIT
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for model in MODELS:
            async with session.post(f"{self.admin}/models/{model}/stop",
                                    headers={CLIENT_HEADER: "soak"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"admin stop {model}: {resp.status} {await resp.text()}")
        await asyncio.sleep(1.0)
        pid = self.stack.daemon.pid
        return open_fds(pid), rss_kb(pid)

    async def sample(self) -> None:
        assert self.stack.daemon is not None
        pid = self.stack.daemon.pid
        while True:
            self.report.fd_max = max(self.report.fd_max, open_fds(pid))
            self.report.rss_max_kb = max(self.report.rss_max_kb, rss_kb(pid))
            await asyncio.sleep(1.0)

    async def watch_events(self, session: aiohttp.ClientSession) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with session.get(f"{self.admin}/events", timeout=timeout) as resp:
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if event["event"] == "state" and event.get("new") == "stopping":
                    self.stopping[event["model"]].append((float(event["time"]), math.inf))
                elif (event["event"] == "state" and event.get("old") == "stopping"
                      and self.stopping[event["model"]]):
                    begun, _ = self.stopping[event["model"]][-1]
                    self.stopping[event["model"]][-1] = (begun, float(event["time"]))
                if event["event"] == "stopped":
                    self.report.stops[str(event.get("reason"))] += 1
                elif event["event"] == "start_failed":
                    self.report.start_failures[str(event.get("reason"))] += 1

    async def run(self, seconds: float, warmup: float) -> None:
        assert self.stack.daemon is not None
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            background = [asyncio.create_task(self.sample()),
                          asyncio.create_task(self.watch_events(session))]
            try:
                cpu0 = cpu_seconds(self.stack.daemon.pid)
                self.t0 = time.monotonic()
                self.end = self.t0 + seconds
                clients = [asyncio.create_task(self.client(session, i))
                           for i in range(self.clients)]
                await asyncio.sleep(warmup)
                paused = time.monotonic()
                self.report.fd_start, self.report.rss_start_kb = await self.quiet_point(session)
                paused = time.monotonic() - paused
                self.gate.set()
                self.end += paused  # the quiet point does not count as traffic time
                await asyncio.gather(*clients)
                self.report.duration = time.monotonic() - self.t0 - paused
                self.report.fd_end, self.report.rss_end_kb = await self.quiet_point(session)
                self.report.daemon_cpu = cpu_seconds(self.stack.daemon.pid) - cpu0
            finally:
                for task in background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                        await task

    def check_cuts(self) -> None:
        """A stream cut is expected only when its request reached the model (its record)
        while the daemon was stopping that model: the README's instant between the stop's last
        scan and the port closing. Any other cut is unexpected."""
        for model, n, sample in self.cuts:
            arrived = [float(r["time"]) for r in read_records(self.records[model])
                       if r.get("event") == "request" and r["path"].endswith(f"&n={n}")]
            if arrived and any(begun <= arrived[0] <= ended
                               for begun, ended in self.stopping[model]):
                self.record_error("stream", model, 200,
                                  "stream cut, connected while its model was stopping", sample)
                self.report.streams_cut_stopping += 1
            else:
                self.record_error("stream", model, 200, "stream cut", sample)

    def check_pids(self) -> None:
        """Every answer for model X came from a process started as model X."""
        for model, rec in self.records.items():
            started = {int(r["pid"]) for r in starts(rec)}
            for pid in self.pids[model] - started:
                self.record_error("any", model, 200, "answer from another process",
                                  f"pid {pid} is not one of model {model}'s processes")


# --- entry points -----------------------------------------------------------------------------


def run_soak(minutes: float, workdir: Path, clients: int = 50, seed: int = 1) -> SoakReport:
    """Run the soak for `minutes` (warm-up included) in `workdir` (created if missing)."""
    workdir.mkdir(parents=True, exist_ok=True)
    seconds = minutes * 60
    warmup = min(60.0, max(10.0, 0.15 * seconds))
    records = {m: workdir / f"records-{m}.jsonl" for m in MODELS}
    for rec in records.values():
        rec.unlink(missing_ok=True)
    models = {
        m: {**fake_model(free_port(), record=records[m]), "idle_timeout": IDLE_TIMEOUTS[m],
            "requires": {"slots": 1}}
        for m in MODELS
    }
    report = SoakReport(minutes=minutes, clients=clients, warmup=warmup)
    stack = Stack(workdir, models, extra={"resources": {"slots": 2}})
    try:
        with stack:
            traffic = Traffic(stack, report, clients, seed, records)
            asyncio.run(traffic.run(seconds, warmup))
            traffic.check_pids()
            traffic.check_cuts()
            report.daemon_log_errors = daemon_log_problems(stack.daemon_log())
    finally:
        stack.close()
        for m, rec in records.items():
            report.starts[m] = len(starts(rec))
            report.leftovers += kill_recorded(rec)
    return report


def results_section(report: SoakReport, command: str) -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head = "?"
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    verdict = "PASS" if report.ok else "FAIL"
    return "\n".join([
        f"## Soak ({report.minutes:g} min): {verdict}",
        "",
        f"- date: {when}; git {head or '?'}; command: `{command}`",
        "- setup: " + " ".join((__doc__ or "").split("Setup:", 1)[-1].split("Errors are")[0].split()),
        "",
        report.markdown(),
        "",
    ])


def append_section(path: Path, section: str) -> None:
    """Replace an earlier soak section of the file (if any) with this one, at the end."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# model-starter benchmarks\n"
    cut = text.find("\n## Soak")
    if cut >= 0:
        nxt = text.find("\n## ", cut + 1)
        text = text[:cut] + (text[nxt:] if nxt >= 0 else "\n")
    path.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "soak"))
    p.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    args = p.parse_args(argv)
    command = shlex.join([repo_relative(sys.executable), *sys.argv])
    report = run_soak(args.minutes, Path(args.workdir), args.clients, args.seed)
    section = results_section(report, command)
    print(section)
    append_section(Path(args.output), section)
    print(f"appended to {args.output}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
