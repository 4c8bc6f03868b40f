"""Figure daemon: the daemon's own start-to-listening, idle RSS and exit."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.driver import run_alone
from bench.harness import (
    Row,
    Settings,
    figure,
    fresh_dir,
    mb,
    ms,
    proc_status_kb,
    repo_relative,
    spread,
    stop_process,
)
from tests.stack import Stack, fake_model, free_port, port_open


@figure("daemon", order=60)
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


if __name__ == "__main__":
    sys.exit(run_alone("daemon"))
