"""The pure lifecycle policy: victim choice, crash-loop backoff, activity parsing."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from model_starter.activity import scan_ports_netlink, scan_ports_proc
from model_starter.policy import Holder, backoff_until, choose_victims


def h(name: str, gpu: float, last: float, busy: bool = False, pinned: bool = False,
      evictable: bool = True) -> Holder:
    return Holder(name, {"gpu": gpu}, last, busy, pinned, evictable)


CAP = {"gpu": 80.0}


@pytest.mark.parametrize(
    ("needs", "holders", "victims", "fits"),
    [
        # fits already: nobody stops
        (24, [h("a", 40, 1)], (), True),
        (40, [h("a", 40, 1)], (), True),
        # least recently used first
        (40, [h("a", 40, 5), h("b", 24, 1)], ("b",), True),
        # a minimal set: b (the older) frees too little, a alone frees enough; b keeps running
        (48, [h("a", 40, 5), h("b", 24, 1)], ("a",), True),
        (60, [h("a", 40, 5), h("b", 24, 1)], ("b", "a"), True),
        # idle before busy, even if the busy one is older
        (48, [h("a", 30, 1, busy=True), h("b", 30, 9)], ("b",), True),
        # busy ones only when the idle ones are not enough
        (70, [h("a", 30, 1, busy=True), h("b", 30, 9)], ("b", "a"), True),
        # pinned never
        (60, [h("a", 40, 1, pinned=True), h("b", 24, 5)], (), False),
        (40, [h("a", 40, 1, pinned=True), h("b", 24, 5)], ("b",), True),
        # starting/stopping holders are not evictable
        (40, [h("a", 40, 1, evictable=False), h("b", 40, 5)], ("b",), True),
        (60, [h("a", 40, 1, evictable=False), h("b", 40, 5)], (), False),
        (90, [], (), False),
        # in LRU order, stop only until it fits
        (30, [h("a", 10, 1), h("b", 10, 2), h("c", 50, 3)], ("a", "b"), True),
    ],
)
def test_choose_victims(needs: float, holders: list[Holder], victims: tuple[str, ...],
                        fits: bool) -> None:
    """Victims: idle first, then least recently used; pinned and transitioning never."""
    got = choose_victims({"gpu": needs}, CAP, holders)
    assert (got.names, got.fits) == (victims, fits)


def hc(name: str, gpu: float, last: float, start: float, busy: bool = False) -> Holder:
    return Holder(name, {"gpu": gpu}, last, busy, start_seconds=start)


@pytest.mark.parametrize(
    ("cap", "needs", "holders", "victims"),
    [
        # the case: S (3, least recently used) and M (6) run, L (6) comes: M alone
        (10, 6, [hc("S", 3, 1, 1.0), hc("M", 6, 2, 1.0)], ("M",)),
        # two sets free enough; the one cheaper to bring back goes (even the more recent)
        (14, 6, [hc("a", 6, 1, 5.0), hc("b", 6, 2, 1.0), hc("c", 1, 0, 1.0)], ("b",)),
        # the same cost: least recently used
        (14, 6, [hc("a", 6, 1, 1.0), hc("b", 6, 2, 1.0), hc("c", 1, 0, 1.0)], ("a",)),
        # one slow start costs more than two quick ones
        (10, 4, [hc("big", 6, 1, 9.0), hc("x", 2, 2, 1.0), hc("y", 2, 3, 1.0)], ("x", "y")),
        # idle over busy, whatever the cost
        (12, 6, [hc("a", 6, 1, 1.0, busy=True), hc("b", 6, 2, 9.0)], ("b",)),
        # fewer busy models stopped even when that means more models
        (10, 4, [hc("a", 6, 1, 1.0, busy=True), hc("x", 2, 2, 1.0), hc("y", 2, 3, 1.0)],
         ("x", "y")),
        # a model whose stop is not needed is never in the set (x is redundant beside a)
        (10, 8, [hc("x", 1, 0, 0.1), hc("a", 8, 5, 0.1)], ("a",)),
    ],
)
def test_eviction_is_minimal_and_cheapest(cap: float, needs: float, holders: list[Holder],
                                          victims: tuple[str, ...]) -> None:
    """Only a minimal set stops: idle before busy, then the cheapest to bring back, then LRU."""
    got = choose_victims({"gpu": needs}, {"gpu": cap}, holders)
    assert (got.names, got.fits) == (victims, True)


def test_eviction_with_many_candidates_is_still_minimal() -> None:
    """Past the exhaustive limit the greedy choice is pruned: no stop that is not needed."""
    holders = [hc(f"m{i:02}", 1, i, 1.0) for i in range(20)] + [hc("big", 30, 50, 1.0)]
    got = choose_victims({"gpu": 31}, {"gpu": 51}, holders)
    assert got.names == ("big",)


def test_victims_that_free_nothing_needed_are_spared() -> None:
    """A model holding only other resources is never stopped to make room."""
    cap = {"gpu0": 24.0, "gpu1": 24.0}
    holders = [Holder("a", {"gpu1": 20}, 1), Holder("b", {"gpu0": 20}, 2)]
    got = choose_victims({"gpu0": 10}, cap, holders)
    assert got.names == ("b",)


def test_one_at_a_time_is_a_capacity_of_one() -> None:
    """Without declared resources every model holds the single slot."""
    got = choose_victims({"models": 1}, {"models": 1}, [Holder("a", {"models": 1}, 1)])
    assert got.names == ("a",)


@pytest.mark.parametrize(
    ("failures", "now", "expected"),
    [
        ([], 100, None),
        ([90, 95], 100, None),  # two failures: below the limit of three
        ([90, 95, 99], 100, 129),  # third failure at 99: back off until 99 + 30
        ([90, 95, 99], 130, None),  # backoff over: one more try allowed
        ([10, 20, 30], 100, None),  # old failures fall out of the 60 s window
        ([50, 95, 99], 100, 129),
    ],
)
def test_backoff_until(failures: list[float], now: float, expected: float | None) -> None:
    """N failures within the window stop starts until the last one plus the backoff."""
    assert backoff_until(failures, now, max_failures=3, window=60, backoff=30) == expected


def test_backoff_disabled_with_zero() -> None:
    """max_failures 0 switches crash-loop protection off."""
    assert backoff_until([1, 2, 3, 4], 5, max_failures=0, window=60, backoff=30) is None


def test_scan_ports_reads_established_and_time_wait(tmp_path: Path) -> None:
    """ESTABLISHED on the model's side counts in flight; TIME_WAIT dates the last close."""
    net = tmp_path / "net"
    net.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    rows = [
        # listening socket: ignored
        "0: 0100007F:2329 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1",
        # server side of two in-flight requests on 9001 (0x2329)
        "1: 0100007F:2329 0100007F:C000 01 00000000:00000000 00:00000000 00000000 0 0 2 1",
        "2: 0100007F:2329 0100007F:C001 01 00000000:00000000 00:00000000 00000000 0 0 3 1",
        # client side of one of them: not counted twice
        "3: 0100007F:C000 0100007F:2329 01 00000000:00000000 00:00000000 00000000 0 0 4 1",
        # closed connections: 58 s and 50 s left of TIME_WAIT -> ended 2 s and 10 s ago
        "4: 0100007F:C002 0100007F:2329 06 00000000:00000000 03:000016A8 00000000 0 0 0 3",
        "5: 0100007F:2329 0100007F:C003 06 00000000:00000000 03:00001388 00000000 0 0 0 3",
        # another port
        "6: 0100007F:232A 0100007F:C004 01 00000000:00000000 00:00000000 00000000 0 0 5 1",
    ]
    (net / "tcp").write_text(header + "\n".join(rows) + "\n")
    got = scan_ports_proc({9001, 9003}, proc=str(tmp_path))
    assert got[9001].in_flight == 2
    assert got[9001].last_close_ago == pytest.approx(2.0)
    assert got[9003].in_flight == 0 and got[9003].last_close_ago is None
    seen = got[9001].peers  # by the other end: None in flight, else seconds since the close
    assert seen[("127.0.0.1", 0xC000)] is None and seen[("127.0.0.1", 0xC001)] is None
    assert seen[("127.0.0.1", 0xC002)] == pytest.approx(2.0)
    assert seen[("127.0.0.1", 0xC003)] == pytest.approx(10.0)
    assert len(seen) == 4


def test_netlink_and_proc_agree_on_real_sockets() -> None:
    """The kernel-filtered netlink scan sees what /proc/net/tcp shows, for several ports."""
    servers = []
    for _ in range(2):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        servers.append(srv)
    pa, pb = (srv.getsockname()[1] for srv in servers)
    pairs = []
    for srv, n in ((servers[0], 3), (servers[1], 2)):
        for _ in range(n):
            client = socket.create_connection(srv.getsockname())
            pairs.append((client, srv.accept()[0]))
    try:
        client, server = pairs.pop(0)
        server.close()  # the model closes first: TIME_WAIT on its side
        client.close()
        client, server = pairs.pop()
        client.close()  # nginx closes first: TIME_WAIT on the client side
        server.close()
        time.sleep(0.05)
        nl = scan_ports_netlink({pa, pb, 1})
        proc = scan_ports_proc({pa, pb, 1})
        assert (nl[pa].in_flight, nl[pb].in_flight, nl[1].in_flight) == (2, 1, 0)
        assert (proc[pa].in_flight, proc[pb].in_flight) == (2, 1)
        for port in (pa, pb):
            assert nl[port].last_close_ago is not None and nl[port].last_close_ago < 2
            assert proc[port].last_close_ago is not None and proc[port].last_close_ago < 2
        assert nl[1].last_close_ago is None
        for scan in (nl, proc):  # each connection once, by its client end
            assert sorted(age is None for age in scan[pa].peers.values()) == [False, True, True]
            assert len(scan[pb].peers) == 2
    finally:
        for client, server in pairs:
            client.close()
            server.close()
        for srv in servers:
            srv.close()
