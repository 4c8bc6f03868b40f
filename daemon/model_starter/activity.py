"""Activity of models the daemon is not in the request path of (error_page mode).

Read from the kernel, at no cost to nginx: each request nginx proxies is its own TCP
connection (the generated upstreams have no keepalive), so

* an ESTABLISHED connection to the model's port is a request in flight (streams too);
* a TIME_WAIT entry on the port is a request that ended; its timer tells when, which
  catches requests that began and ended between two scans.

The kernel is asked through netlink sock_diag with a per-port filter (what `ss` does),
so the cost does not grow with the host's other sockets; a busy nginx without upstream
keepalive leaves tens of thousands of TIME_WAIT entries that /proc/net/tcp would make us
parse every time. /proc is the fallback where netlink is unavailable.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from model_starter.netstat import tcp_rows

__all__ = ["Peer", "PortActivity", "Seen", "peers_of", "scan_ports", "scan_ports_netlink",
           "scan_ports_proc"]

ESTABLISHED, TIME_WAIT = 1, 6
TIME_WAIT_SECONDS = 60.0
_TICKS = os.sysconf("SC_CLK_TCK")

# netlink / sock_diag constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h)
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP, INET_DIAG_BC_S_EQ, INET_DIAG_BC_D_EQ = 1, 11, 12
_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI48s")
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")  # inet_diag_msg


Peer = tuple[str, int]  # the other end of a connection to a port: (address, port)
# A port's connections by their other end: None while in flight, else seconds since it closed
# (its TIME_WAIT age). A pair in TIME_WAIT can carry a new connection (tcp_tw_reuse, on for
# loopback): a later close on the same pair tells the new connection from the old one.
Seen = dict[Peer, float | None]


@dataclass
class PortActivity:
    in_flight: int = 0
    last_close_ago: float | None = None  # seconds since the newest request on it ended
    # Every connection seen (in flight or in TIME_WAIT), by its other end: a connection
    # keeps that identity from connect to the end of TIME_WAIT (60 s), whichever side closed.
    peers: Seen = field(default_factory=dict)
    # The same, by the other end's address (a shared server tells its clients apart so).
    by_source: dict[str, PortActivity] = field(default_factory=dict)

    def closed(self, ago: float) -> None:
        if self.last_close_ago is None or ago < self.last_close_ago:
            self.last_close_ago = ago

    def source(self, address: str) -> PortActivity:
        """The connections from `address` alone."""
        return self.by_source.get(address) or PortActivity()


def scan_ports(ports: Iterable[int]) -> dict[int, PortActivity]:
    """In-flight connections, the newest close and the connections seen, per local port."""
    wanted = set(ports)
    try:
        return scan_ports_netlink(wanted)
    except OSError:
        return scan_ports_proc(wanted)


def peers_of(port: int, host: str = "", source: str | None = None) -> Seen:
    """The connections to `port` that exist now (in flight or in TIME_WAIT), from `source`
    only if given. A model on an address literal has connections of that family only: one
    netlink dump instead of two."""
    try:
        v4 = ipaddress.ip_address(host).version == 4
        families: tuple[int, ...] = (socket.AF_INET,) if v4 else (socket.AF_INET6,)
    except ValueError:  # a name: either
        families = FAMILIES
    try:
        act = scan_ports_netlink({port}, families)[port]
    except OSError:
        act = scan_ports_proc({port})[port]
    return act.peers if source is None else act.source(source).peers


# -- netlink ---------------------------------------------------------------------------------


def _bytecode(tests: list[tuple[int, int]]) -> bytes:
    """sock_diag bytecode for "t1 or t2 or ...", built the way `ss` builds it: each test
    falls through to a JMP to the end (accept) when true, or jumps over that JMP to the
    next test when false; the last test jumps past the end (reject) when false. Every op
    lies on the chain of "yes" jumps, which the kernel's audit requires."""
    (op, port), rest = tests[0], tests[1:]
    test = struct.pack("=BBH", op, 8, 12) + struct.pack("=BBH", 0, 0, port)
    if not rest:
        return test
    tail = _bytecode(rest)
    return test + struct.pack("=BBH", INET_DIAG_BC_JMP, 4, len(tail) + 4) + tail


def _request(family: int, ports: list[int], seq: int) -> bytes:
    """A dump of ESTABLISHED and TIME_WAIT sockets whose source or destination port is one
    of `ports`, filtered in the kernel."""
    tests = [(op, port) for port in ports for op in (INET_DIAG_BC_S_EQ, INET_DIAG_BC_D_EQ)]
    bytecode = _bytecode(tests)
    attr = struct.pack("=HH", 4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    states = (1 << ESTABLISHED) | (1 << TIME_WAIT)
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states, b"\0" * 48) + attr
    header = _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


Row = tuple[int, int, int, int, str, str]


def _dump(sock: socket.socket, request: bytes, family: int) -> list[Row]:
    """(state, source port, destination port, expires in ms, source and destination
    address) of each matched socket."""
    sock.send(request)
    size = 4 if family == socket.AF_INET else 16
    out: list[Row] = []
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + _NLMSG.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
            if kind == NLMSG_DONE:
                return out
            if kind == NLMSG_ERROR:
                errno_ = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                raise OSError(errno_, "sock_diag: " + os.strerror(errno_))
            if kind == SOCK_DIAG_BY_FAMILY:
                f = _MSG.unpack_from(data, offset + _NLMSG.size)
                sport, dport = struct.unpack(">H", f[4])[0], struct.unpack(">H", f[5])[0]
                out.append((f[1], sport, dport, f[10],  # state, ports, expires (ms)
                            socket.inet_ntop(family, f[6][:size]),
                            socket.inet_ntop(family, f[7][:size])))
            if length < _NLMSG.size:
                raise OSError("sock_diag: malformed message")
            offset += (length + 3) & ~3


FAMILIES = (socket.AF_INET, socket.AF_INET6)


def scan_ports_netlink(ports: set[int], families: tuple[int, ...] = FAMILIES
                       ) -> dict[int, PortActivity]:
    out = {p: PortActivity() for p in ports}
    if not ports:
        return out
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        for seq, family in enumerate(families, 1):
            rows = _dump(sock, _request(family, sorted(ports), seq), family)
            for state, sport, dport, expires, src, dst in rows:
                _count(out, state, (src, sport), (dst, dport), expires / 1000)
    return out


def _count(out: dict[int, PortActivity], state: int, local: Peer, remote: Peer,
           expires: float) -> None:
    """One socket: `local` is its own end, `remote` the other; `expires` in seconds."""
    if local[1] in out:
        act, peer = out[local[1]], remote
    elif remote[1] in out:
        act, peer = out[remote[1]], local
    else:
        return
    src = act.by_source.get(peer[0])
    if src is None:
        src = act.by_source[peer[0]] = PortActivity()
    age = None if state == ESTABLISHED else max(0.0, TIME_WAIT_SECONDS - expires)
    for a in (act, src):
        if a.peers.get(peer, 0.0) is not None:  # either side in flight: in flight
            a.peers[peer] = age
        if age is not None:
            a.closed(age)
        elif local[1] in out:  # the model's side of the connection
            a.in_flight += 1


# -- /proc fallback --------------------------------------------------------------------------


def scan_ports_proc(ports: set[int], proc: str = "/proc") -> dict[int, PortActivity]:
    out = {p: PortActivity() for p in ports}
    if not ports:
        return out
    for row in tcp_rows(proc):
        if len(row) < 6:
            continue
        state = int(row[3], 16)
        if state not in (ESTABLISHED, TIME_WAIT):
            continue
        local, remote = _proc_addr(row[1]), _proc_addr(row[2])
        _count(out, state, local, remote, int(row[5].split(":")[1], 16) / _TICKS)
    return out


def _proc_addr(field_: str) -> Peer:
    """``0100007F:1F90`` (an IPv4 address as the host's 32-bit word) -> ("127.0.0.1", 8080);
    IPv6 addresses are kept as their hex text (only compared, never shown)."""
    addr, port = field_.rsplit(":", 1)
    if len(addr) == 8:
        addr = socket.inet_ntop(socket.AF_INET, struct.pack("=I", int(addr, 16)))
    return addr, int(port, 16)
