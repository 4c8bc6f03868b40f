"""Who holds a port, read from /proc/net/tcp{,6} (Linux), without running `ss`."""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["listening_inodes", "pids_holding", "tcp_rows"]

LISTEN = "0A"


def tcp_rows(proc: str = "/proc") -> Iterator[list[str]]:
    """The rows of /proc/net/tcp and /proc/net/tcp6, split into fields, headers skipped."""
    for name in ("net/tcp", "net/tcp6"):
        try:
            with open(f"{proc}/{name}") as fh:
                next(fh, None)
                for line in fh:
                    yield line.split()
        except OSError:
            continue


def listening_inodes(port: int, proc: str = "/proc") -> set[int]:
    """Socket inodes listening on `port` (any local address)."""
    out = set()
    for row in tcp_rows(proc):
        if len(row) > 9 and row[3] == LISTEN and int(row[1].rsplit(":", 1)[1], 16) == port:
            out.add(int(row[9]))
    return out


def pids_holding(inodes: set[int], proc: str = "/proc") -> list[int]:
    """PIDs with an open file descriptor on one of these socket inodes."""
    if not inodes:
        return []
    wanted = {f"socket:[{i}]" for i in inodes}
    found = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"{entry.path}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) in wanted:
                        found.append(int(entry.name))
                        break
                except OSError:
                    continue
    return sorted(found)

