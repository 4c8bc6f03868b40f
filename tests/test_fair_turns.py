"""Fair turns through real nginx: two models that cannot run together (`gpu: 1`, each
needs 1), interleaved clients. Nobody gets an error or hangs; a waiting model gets its turn
within `max_wait`, or its requests a 503 + Retry-After."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tests.stack import Response, fake_model, free_port, stack, starts, wait_for
from tests.test_lifecycle import Stream

ONE_GPU = {"resources": {"gpu": 1}}


def model(record: Path, *extra: str, **keys: Any) -> dict[str, Any]:
    return {**fake_model(free_port(), *extra, record=record), "requires": {"gpu": 1},
            "idle_timeout": 0, **keys}


def test_interleaved_clients_take_turns_without_errors(tmp_path: Path, record: Path) -> None:
    """6 clients, each alternating a and b (each start 0.5 s): every request is served, and
    a switch serves several requests (the waiting ones), not one."""
    models = {name: model(record, "--listen-delay", "0.5", max_wait=20) for name in "ab"}
    statuses: list[int] = []
    lock = threading.Lock()
    with stack(tmp_path, models, extra=ONE_GPU) as s:

        def client(i: int) -> None:
            for j in range(i, i + 6):
                status = s.get(f"/{'ab'[j % 2]}/c{i}/{j}", timeout=120).status
                with lock:
                    statuses.append(status)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not any(t.is_alive() for t in threads), "a client hung"
    assert statuses == [200] * 36, statuses
    a, b = (len(starts(record, models[n]["port"])) for n in "ab")
    assert a >= 2 and b >= 2, (a, b)  # both got turns
    assert a + b <= 36 / 2, (a, b)  # no thrash: a switch serves the requests waiting for it


def test_past_max_wait_a_waiting_request_gets_503_then_its_turn(tmp_path: Path,
                                                                record: Path) -> None:
    """a streams (busy, never cut); b's request waits max_wait (1 s), then 503
    capacity_timeout + Retry-After; once a is done, b gets its turn."""
    models = {"a": model(record), "b": model(record, max_wait=1)}
    with stack(tmp_path, models, extra={**ONE_GPU, "release_grace": 0.2}) as s:
        st = Stream(s, "/a/stream?seconds=4&interval=0.2")
        st.start()
        assert st.started.wait(10)
        resp = s.get("/b/x")
        assert resp.status == 503, resp
        assert resp.json()["error"] == "capacity_timeout"
        assert "max_wait 1" in resp.json()["detail"]
        assert resp.headers["retry-after"] == "1"
        st.join(30)
        assert st.complete, (st.status, st.error)
        assert s.get("/b/x").status == 200
        assert starts(record, models["b"]["port"])


def test_auth_request_mode_gives_the_waiting_model_its_turn_under_load(
        tmp_path: Path, record: Path) -> None:
    """a never has a pause (3 clients with overlapping requests); in auth_request mode the
    daemon sees a's requests, so once b's turn is due they wait, a drains and b runs; then
    a comes back. Every request is served."""
    models = {name: model(record, "--listen-delay", "0.5", mode="auth_request", max_wait=4)
              for name in "ab"}
    a_statuses: list[int] = []
    lock = threading.Lock()
    done = threading.Event()
    with stack(tmp_path, models, extra=ONE_GPU) as s:
        assert s.get("/a/warm").status == 200

        def a_client(i: int) -> None:
            while not done.is_set():
                status = s.get(f"/a/slow?seconds=0.6&c={i}", timeout=120).status
                with lock:
                    a_statuses.append(status)

        threads = [threading.Thread(target=a_client, args=(i,)) for i in range(3)]
        for i, t in enumerate(threads):
            t.start()
            wait_for(lambda n=i + 1: s.status()["a"]["in_flight"] >= n or len(a_statuses) > 0,
                     10, "a's clients to overlap")
        b: Response | None = None
        try:
            b = s.get("/b/x", timeout=120)
            after = len(a_statuses)
            wait_for(lambda: len(a_statuses) >= after + 3, 60, "a to serve again")
        finally:
            done.set()
            for t in threads:
                t.join(120)
        assert b is not None and b.status == 200, b
        assert not any(t.is_alive() for t in threads), "a client hung"
    assert a_statuses and set(a_statuses) == {200}, a_statuses
    assert len(starts(record, models["a"]["port"])) >= 2  # a yielded, then came back
    assert len(starts(record, models["b"]["port"])) == 1
