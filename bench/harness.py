"""What every figure shares: the registry (``@figure``), Settings and Row, the results table,
percentiles and formatting, and small helpers for the processes a figure starts or watches.

A figure is a function ``(Settings) -> list[Row]`` in a module ``bench/fig_<name>.py``,
registered with ``@figure("name", order=N)``; bench/run.py imports every such module and runs
the figures in ``order`` (the table's order). Everything binds 127.0.0.1, and every process a
figure starts is stopped by PID in a ``finally``. Scratch files (nginx configs, logs, model
records) are kept under bench/out/ (git-ignored) for inspection.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
if str(ROOT) not in sys.path:  # tests.stack (the real nginx + daemon stack) lives there
    sys.path.insert(0, str(ROOT))

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


@dataclass(frozen=True)
class Figure:
    name: str
    fn: FigureFn
    order: int  # place in the table and the run (cold-start first: hot-path leaves TIME_WAITs)

    @property
    def doc(self) -> str:
        return " ".join((self.fn.__doc__ or "").split())


FIGURES: dict[str, Figure] = {}


def figure(name: str, order: int = 1000) -> Callable[[FigureFn], FigureFn]:
    """Register a figure; a new figure without an order runs (and is listed) after the others."""
    def register(fn: FigureFn) -> FigureFn:
        FIGURES[name] = Figure(name, fn, order)
        return fn

    return register


def in_order(figures: dict[str, Figure]) -> list[Figure]:
    return sorted(figures.values(), key=lambda f: (f.order, f.name))


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


# --- numbers and formatting ------------------------------------------------------------------


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


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return f"median {fmt(statistics.median(values))} (min {fmt(min(values))}, max {fmt(max(values))})"


def repo_relative(path: str) -> str:
    """`path` relative to the repository when inside it: results name no machine paths."""
    return os.path.relpath(path, ROOT) if path.startswith(str(ROOT) + os.sep) else path


# --- processes -------------------------------------------------------------------------------


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


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...), in kB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


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


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def main_thread_samples(raw: Path) -> list[tuple[str, int]]:
    """py-spy raw output (`--threads`) -> (stack, count) of the daemon's main thread."""
    out: list[tuple[str, int]] = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if count_text.isdigit() and "MainThread" in stack.split(";", 1)[0]:
            out.append((stack, int(count_text)))
    return out
