"""`model-starter doctor`: what concurrency the running nginx and daemon allow, and how to raise it.

Each request proxied by nginx holds two nginx connections (the client's, and the one to the
model or, while the model starts, to the daemon), and a cold-start herd holds them for the
whole start. With Debian's stock `nginx.conf` (`worker_processes auto`, `worker_connections
768`) 1000 concurrent clients on 2 cores got 284 connection resets. The daemon holds one
socket per held request. This module reads nginx's effective settings (`nginx -T`), the open
file limits of the running nginx workers and daemon (`/proc/PID/limits`), and says what they
allow and which setting to raise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "Finding",
    "NginxSettings",
    "daemon_pid",
    "diagnose",
    "nofile_limit",
    "parse_nginx_dump",
    "render",
    "run_nginx_dump",
]

NGINX_DEFAULT_CONNECTIONS = 512  # nginx's compiled-in worker_connections
NGINX_DEFAULT_PID = "/run/nginx.pid"
CONNECTIONS_PER_REQUEST = 2  # client + upstream (the model, or the daemon while it starts)
# Descriptors a worker needs beyond its connections (listeners, logs, temp files).
WORKER_SPARE_FILES = 32

Level = Literal["ok", "warn", "info"]


@dataclass(frozen=True)
class Finding:
    level: Level
    text: str


@dataclass(frozen=True)
class NginxSettings:
    """nginx's effective settings, as `nginx -T` prints them."""

    worker_processes: int
    worker_processes_raw: str
    worker_connections: int
    worker_rlimit_nofile: int | None
    pid_file: str
    conf_file: str | None

    def per_worker(self, worker_nofile: int | None) -> int:
        """Connections one worker can hold: worker_connections, capped by its open-file limit."""
        limit = self.worker_rlimit_nofile or worker_nofile
        if limit is None:
            return self.worker_connections
        return max(0, min(self.worker_connections, limit - WORKER_SPARE_FILES))

    def concurrent_requests(self, worker_nofile: int | None) -> int:
        return self.worker_processes * self.per_worker(worker_nofile) // CONNECTIONS_PER_REQUEST


_COMMENT = re.compile(r"#[^\n]*")


def _directive(text: str, name: str) -> str | None:
    match = re.search(rf"(?:^|[;{{}}\s]){name}\s+([^;{{}}]+?)\s*;", text)
    return match.group(1) if match else None


def parse_nginx_dump(dump: str, cpus: int | None = None) -> NginxSettings:
    """Read the worker settings out of `nginx -T` output (every file it printed)."""
    conf_file = None
    header = re.search(r"^# configuration file (\S+):", dump, re.MULTILINE)
    if header:
        conf_file = header.group(1)
    text = _COMMENT.sub("", dump)
    processes_raw = _directive(text, "worker_processes") or "1"
    auto = processes_raw == "auto"
    processes = (cpus or os.cpu_count() or 1) if auto else int(processes_raw)
    connections = _directive(text, "worker_connections")
    rlimit = _directive(text, "worker_rlimit_nofile")
    return NginxSettings(
        worker_processes=processes,
        worker_processes_raw=processes_raw,
        worker_connections=int(connections) if connections else NGINX_DEFAULT_CONNECTIONS,
        worker_rlimit_nofile=int(rlimit) if rlimit else None,
        pid_file=_directive(text, "pid") or NGINX_DEFAULT_PID,
        conf_file=conf_file,
    )


def run_nginx_dump(nginx: str | None = None, conf: str | None = None) -> str:
    """`nginx -T` (optionally `-c CONF`): the effective configuration, every include printed."""
    binary = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [binary, "-T", "-q"] + (["-c", conf] if conf else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {out.stderr.strip()}")
    return out.stdout


def nofile_limit(pid: int | str) -> tuple[int, int] | None:
    """(soft, hard) RLIMIT_NOFILE of a process, from /proc/PID/limits (None if unreadable)."""
    try:
        lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            big = 2**63 - 1
            return (big if soft == "unlimited" else int(soft), big if hard == "unlimited" else int(hard))
    return None


def _children(ppid: int) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
            yield int(entry.name)


def worker_nofile(pid_file: str) -> int | None:
    """The smallest open-file soft limit among the running nginx's workers (None if unknown)."""
    try:
        master = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    limits = [lim[0] for pid in _children(master) if (lim := nofile_limit(pid)) is not None]
    return min(limits) if limits else None


def daemon_pid(port: int) -> int | None:
    """The daemon: the process listening on its TCP port, found by socket inode (reading other
    users' descriptors needs root with CAP_SYS_PTRACE), else the only `model-starter serve`
    process (command lines are world-readable), else None."""
    return _listener(port) or _only_serve_process()


def _only_serve_process() -> int | None:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and any(a.endswith((b"model-starter", b"model_starter")) for a in argv):
            found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


def _listener(port: int) -> int | None:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return int(entry.name)
            except OSError:
                continue
    return None


def diagnose(settings: NginxSettings, worker_files: int | None, daemon_files: int | None,
             target: int) -> list[Finding]:
    """What the limits allow against `target` concurrent clients, and what to raise."""
    found: list[Finding] = []
    where = settings.conf_file or "nginx.conf"
    allowed = settings.concurrent_requests(worker_files)
    limit_txt = (f"worker_rlimit_nofile {settings.worker_rlimit_nofile}"
                 if settings.worker_rlimit_nofile else
                 f"worker_rlimit_nofile unset, workers' open-file limit "
                 f"{worker_files if worker_files is not None else 'unknown (nginx not running?)'}")
    found.append(Finding("info", (
        f"nginx: worker_processes {settings.worker_processes_raw} ({settings.worker_processes}), "
        f"worker_connections {settings.worker_connections}, {limit_txt}")))
    level: Level = "ok" if allowed >= target else "warn"
    found.append(Finding(level, (
        f"nginx allows about {allowed} concurrent proxied requests "
        f"({settings.worker_processes} worker(s) x {settings.per_worker(worker_files)} connections"
        f" / {CONNECTIONS_PER_REQUEST}: client + model or daemon); target {target}")))
    if allowed < target:
        need = -(-target * CONNECTIONS_PER_REQUEST // settings.worker_processes)
        need = max(need * 2, 4096)  # workers do not share the load evenly
        found.append(Finding("warn", (
            f"raise in {where}: `events {{ worker_connections {need}; }}` and, at the top level, "
            f"`worker_rlimit_nofile {need * 2};` (or LimitNOFILE={need * 2} for nginx.service); "
            f"then `nginx -t && systemctl reload nginx`. `bash scripts/nginx-limits.sh` does it")))
    if daemon_files is None:
        found.append(Finding("info", (
            "daemon: not found listening (not running, or run doctor as its user or root); "
            "each held request holds one of its descriptors: give it LimitNOFILE=65536 "
            "(the unit does) or `ulimit -n` as high as the hard limit")))
    else:
        level = "ok" if daemon_files >= target + 256 else "warn"
        found.append(Finding(level, (
            f"daemon: open-file limit {daemon_files}; a herd of {target} cold requests holds "
            f"about {target} of them")))
        if level == "warn":
            found.append(Finding("warn", (
                "raise the daemon's limit: LimitNOFILE=65536 in its unit, or `ulimit -n "
                "$(ulimit -Hn)` before `model-starter serve` (scripts/run.sh does)")))
    return found


def render(findings: list[Finding]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "info": "    "}
    return "\n".join(f"{marks[f.level]} {f.text}" for f in findings) + "\n"
