"""Activity of models the daemon is not in the request path of (error_page mode).

Read from the kernel, at no cost to nginx: each request nginx proxies is its own TCP
connection (the generated upstreams have no keepalive), so

* an ESTABLISHED connection to the model's port is a request in flight (streams too);
* a TIME_WAIT entry on the port is a request that ended; its timer tells when
  (TIME_WAIT lasts 60 s, /proc shows the remaining time in clock ticks), which
  catches requests that began and ended between two scans.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PortActivity", "scan_ports"]

ESTABLISHED = "01"
TIME_WAIT = "06"
TIME_WAIT_SECONDS = 60.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class PortActivity:
    in_flight: int = 0
    last_close_ago: float | None = None  # seconds since the newest request on it ended


def scan_ports(ports: Iterable[int], proc: str = "/proc") -> dict[int, PortActivity]:
    """In-flight connections and the newest close, per local port."""
    wanted = set(ports)
    out = {p: PortActivity() for p in wanted}
    if not wanted:
        return out
    for name in ("net/tcp", "net/tcp6"):
        try:
            with open(f"{proc}/{name}") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            row = line.split()
            if len(row) < 6:
                continue
            state = row[3]
            if state not in (ESTABLISHED, TIME_WAIT):
                continue
            local = int(row[1].rsplit(":", 1)[1], 16)
            if state == ESTABLISHED:
                if local in wanted:  # the model's side of the connection
                    out[local].in_flight += 1
                continue
            remote = int(row[2].rsplit(":", 1)[1], 16)
            port = local if local in wanted else remote if remote in wanted else None
            if port is None:
                continue
            remaining = int(row[5].split(":")[1], 16) / _TICKS
            ago = max(0.0, TIME_WAIT_SECONDS - remaining)
            act = out[port]
            if act.last_close_ago is None or ago < act.last_close_ago:
                act.last_close_ago = ago
    return out
