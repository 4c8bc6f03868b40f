"""Test harness for several hosts on one machine: a network namespace per node, joined to
the root namespace by a veth pair (root side 10.77.N.1, node side 10.77.N.2).

The whole test range is routed into a local black hole first, so no packet for it can ever
take the default route out of the machine (a veth going down removes its own route); the
namespaces, veths and that route are removed again in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

RANGE = "10.77.0.0/16"


def ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


@dataclass(frozen=True)
class NetNode:
    """One node's namespace and the veth pair joining it to the root namespace."""

    ns: str
    host_if: str  # the root namespace's end
    host_addr: str  # its address: the front nginx's source address towards this node
    addr: str  # the node's address (inside its namespace, on `eth0`)

    def argv(self, *argv: str) -> list[str]:
        """`argv` run inside the node's namespace (`ip netns exec` execs: same PID)."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def set_link(self, state: str) -> None:
        """The node's end of the veth up or down (down: its host goes silent)."""
        ip("-n", self.ns, "link", "set", "eth0", state)


def route_stays_local(addr: str) -> bool:
    """`ip route get`: the kernel sends packets for `addr` to a veth or a black hole, never
    through a gateway."""
    out = ip("route", "get", addr)
    return " via " not in out and ("dev msf" in out or out.startswith("blackhole"))


def tcp_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@contextlib.contextmanager
def fleet_network(count: int) -> Iterator[list[NetNode]]:
    """`count` node namespaces, each on its own /24 of the test range."""
    tag = os.getpid() % 100000
    nodes: list[NetNode] = []
    ip("route", "add", "blackhole", RANGE)
    try:
        for i in range(1, count + 1):
            node = NetNode(f"msf{tag}n{i}", f"msf{tag}h{i}", f"10.77.{i}.1", f"10.77.{i}.2")
            ip("netns", "add", node.ns)
            nodes.append(node)
            ip("link", "add", node.host_if, "type", "veth", "peer", "name", "eth0",
               "netns", node.ns)
            ip("addr", "add", f"{node.host_addr}/24", "dev", node.host_if)
            ip("link", "set", node.host_if, "up")
            ip("-n", node.ns, "addr", "add", f"{node.addr}/24", "dev", "eth0")
            ip("-n", node.ns, "link", "set", "eth0", "up")
            ip("-n", node.ns, "link", "set", "lo", "up")
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", node.ns)  # takes its veth pair with it
            with contextlib.suppress(RuntimeError):
                ip("link", "del", node.host_if)
        ip("route", "del", "blackhole", RANGE)
