"""Runs registered figures and writes the results table (bench/RESULTS.md, or
bench/out/RESULTS-only.md for a partial run). bench/run.py runs every figure through it; a
figure module run alone (`python -m bench.fig_swap`) runs itself through `run_alone`."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.util
import os
import pkgutil
import platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.harness import (
    BENCH,
    FIGURES,
    OUT,
    ROOT,
    Figure,
    Row,
    Settings,
    in_order,
    markdown_table,
    py_spy,
    repo_relative,
)
from tests.stack import NGINX

DESCRIPTION = "model-starter benchmarks: one command runs every figure and writes bench/RESULTS.md."


def discover() -> dict[str, Figure]:
    """Import every bench/fig_*.py; each registers its figure(s) with ``@figure``."""
    for module in pkgutil.iter_modules([str(BENCH)]):
        if module.name.startswith("fig_"):
            importlib.import_module(f"bench.{module.name}")
    return FIGURES


# --- the environment, at the top of the table ------------------------------------------------


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


def command_line() -> str:
    """How this run was started, as typed from the repository root (`-m` runs by module name)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    head = ["-m", spec.name] if spec is not None else [repo_relative(sys.argv[0])]
    return shlex.join([repo_relative(sys.executable), *head, *sys.argv[1:]])


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


# --- running and writing ---------------------------------------------------------------------


def run_figure(fig: Figure, settings: Settings) -> tuple[list[Row], bool]:
    """(rows, ok): a figure that raises gives one FAILED row instead of its rows."""
    print(f"== {fig.name}", file=sys.stderr)
    t0 = time.monotonic()
    try:
        rows, ok = fig.fn(settings), True
    except Exception as exc:
        traceback.print_exc()
        rows, ok = [Row(fig.name, "FAILED", f"{type(exc).__name__}: {exc}"[:300], ok=False)], False
    print(f"== {fig.name} done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return rows, ok


def results_doc(env: list[str], rows: list[Row], figures: list[Figure]) -> str:
    return "\n".join([
        "# model-starter benchmarks",
        "",
        *env,
        "",
        markdown_table(rows),
        "",
        "## Figures",
        "",
        *(f"**{fig.name}.** {fig.doc}\n" for fig in figures),
    ])


def write_results(out: Path, doc: str) -> None:
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    soak = old.find("\n## Soak")  # bench/soak.py's section (its own date and command) stays
    if soak >= 0:
        doc = doc.rstrip("\n") + "\n\n" + old[soak + 1:]
    print(doc)
    out.write_text(doc, encoding="utf-8")
    print(f"wrote {repo_relative(str(out))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the registered figures (all, or those named by --only) and write the table."""
    p = argparse.ArgumentParser(description=DESCRIPTION)
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
    profile = py_spy() is not None if args.profile is None else bool(args.profile)
    settings = Settings(quick=args.quick, out=OUT, profile=profile)
    env = environment(command_line())  # before the figures: the code measured, not the code after
    OUT.mkdir(parents=True, exist_ok=True)
    figures = [f for f in in_order(FIGURES) if not args.only or f.name in args.only]
    rows: list[Row] = []
    failed = False
    for fig in figures:
        got, ok = run_figure(fig, settings)
        rows.extend(got)
        failed = failed or not ok
    write_results(Path(args.output), results_doc(env, rows, figures))
    return 1 if failed else 0


def run_alone(name: str) -> int:
    """`python -m bench.fig_<name> [--quick] [--no-profile] [--output FILE]`: this figure only,
    written like `bench/run.py --only name` (bench/out/RESULTS-only.md by default)."""
    return main(["--only", name, *sys.argv[1:]])
