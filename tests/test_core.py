"""The start path end to end: real nginx, real daemon, real model processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.stack import (
    FAKEMODEL,
    Stack,
    fake_model,
    free_port,
    pid_alive,
    port_open,
    read_records,
    request,
    stack,
    starts,
    wait_for,
)

VERBS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]



def model_requests(record: Path, path: str) -> list[dict[str, object]]:
    return [r for r in read_records(record) if r["event"] == "request" and r["path"] == path]


def test_every_verb_cold_and_warm_reaches_the_same_path(tmp_path: Path, record: Path) -> None:
    """Each verb, cold then warm, reaches the model once, with the prefix stripped once."""
    port = free_port()
    with stack(tmp_path, {"m": fake_model(port, record=record)}) as s:
        for verb in VERBS:
            s.direct("POST", "/_ms/models/m/stop")
            assert not port_open(port)
            path = f"/v1/x/{verb.lower()}?q=1&r=a%20b"
            body = b"payload" if verb in ("POST", "PUT", "PATCH") else None
            cold = s.call(verb, f"/m{path}", body=body)
            warm = s.call(verb, f"/m{path}", body=body)
            assert cold.status == warm.status == 200, (verb, cold, s.daemon_log())
            seen = [r["path"] for r in model_requests(record, path)]
            assert seen == [path, path], (verb, seen)
            if verb != "HEAD":
                assert cold.json()["path"] == warm.json()["path"] == path
                assert cold.json()["method"] == verb
        assert len(starts(record)) == len(VERBS)


def test_bare_model_name_reaches_the_root(tmp_path: Path, record: Path) -> None:
    """`/m` and `/m?x` reach the model as `/` and `/?x`."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.get("/m").json()["path"] == "/"
        assert s.get("/m?x=1").json()["path"] == "/?x=1"


def test_large_and_chunked_bodies_survive_the_replay(tmp_path: Path, record: Path) -> None:
    """A 5 MB POST and a chunked upload after a cold start arrive byte for byte."""
    body = os.urandom(5 * 1024 * 1024)
    digest = hashlib.sha256(body).hexdigest()
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        resp = s.call("POST", "/m/upload", body=body)
        assert resp.status == 200, resp
        assert resp.json()["body_sha256"] == digest
        s.direct("POST", "/_ms/models/m/stop")

        def chunks() -> object:
            for i in range(0, len(body), 256 * 1024):
                yield body[i : i + 256 * 1024]

        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", s.nginx_port, timeout=60)
        conn.request("POST", "/m/chunked", body=chunks(), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        assert r.status == 200, data
        import json

        assert json.loads(data)["body_sha256"] == digest
        assert len(starts(record)) == 2


async def test_herd_of_200_cold_requests_starts_once(tmp_path: Path, record: Path) -> None:
    """200 concurrent cold requests: exactly one start, 200 successes."""
    model = fake_model(free_port(), "--listen-delay", "0.3", record=record)
    with stack(tmp_path, {"m": model}) as s:
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn) as http:

            async def one(i: int) -> int:
                async with http.get(f"http://127.0.0.1:{s.nginx_port}/m/herd/{i}") as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(200)))
        assert statuses.count(200) == 200, sorted(set(statuses))
        assert len(starts(record)) == 1


def test_models_own_502_and_504_pass_through(tmp_path: Path, record: Path) -> None:
    """The model's own 502/504 reach the client unchanged and start nothing."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.get("/m/warmup").status == 200
        for code in (502, 504):
            resp = s.get(f"/m/status/{code}")
            assert resp.status == code
            assert resp.json() == {"from": "model", "status": code}
        assert len(starts(record)) == 1
        assert s.status()["m"]["starts"] == 1


def test_unknown_model_is_a_json_404(tmp_path: Path, record: Path) -> None:
    """Unknown names get the daemon's JSON 404 through nginx and directly; nothing starts."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        for resp in (s.get("/nope/v1/x"), s.call("POST", "/nope", body=b"x"), s.get("/"),
                     s.direct("GET", "/nope/x")):
            assert resp.status == 404
            assert resp.headers["content-type"].startswith("application/json")
            assert resp.json()["error"] in ("unknown_model", "not_found")
        assert starts(record) == []


def test_admin_api_is_not_reachable_through_nginx(tmp_path: Path, record: Path) -> None:
    """/_ms/... through nginx is a 404; directly on loopback it answers."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.get("/_ms/status").status == 404
        assert s.call("POST", "/_ms/models/m/start").status == 404
        assert starts(record) == []
        assert s.direct("GET", "/_ms/status").status == 200


def test_model_that_exits_at_once_gets_503_with_log_tail(tmp_path: Path, record: Path) -> None:
    """A model that exits while starting fails at once: 503 JSON with the exit status and a
    request id; the log tail (which may hold secrets) is in `status` and the daemon's log
    under that id, never in the client's answer."""
    model = fake_model(free_port(), "--exit-at-once", "7", record=record)
    model["startup_timeout"] = 60
    with stack(tmp_path, {"m": model}) as s:
        t0 = time.monotonic()
        resp = s.get("/m/v1/x")
        elapsed = time.monotonic() - t0
        assert resp.status == 503
        assert elapsed < 2
        assert "retry-after" in resp.headers
        data = resp.json()
        assert data["error"] == "exited" and data["exit_status"] == 7
        assert "log_tail" not in data and b"line 25" not in resp.body
        assert resp.headers["x-model-starter-request-id"] == data["request_id"]
        tail = s.status()["m"]["last_error"]["log_tail"]
        assert tail[-1] == "line 25" and len(tail) == 20
        wait_for(lambda: f"request {data['request_id']}: model=m" in s.daemon_log(), 10,
                 "the daemon to log the failure under the request id")
        assert "line 25" in s.daemon_log().split(data["request_id"], 1)[1]


def test_model_never_healthy_times_out_and_is_stopped(tmp_path: Path, record: Path) -> None:
    """A model never healthy: 503 after startup_timeout, and its process is gone."""
    model = fake_model(free_port(), "--never-healthy", record=record)
    model["startup_timeout"] = 1.5
    with stack(tmp_path, {"m": model}) as s:
        t0 = time.monotonic()
        resp = s.get("/m/x")
        elapsed = time.monotonic() - t0
        assert resp.status == 503, resp
        assert 1.5 <= elapsed < 5
        assert resp.json()["error"] == "startup_timeout"
        assert "HTTP 503" in resp.json()["detail"]
        pids = [r["pid"] for r in starts(record)]
        assert len(pids) == 1
        wait_for(lambda: not pid_alive(pids[0]), 5, "the half-started model to be gone")


def test_start_failure_reaches_all_waiters(tmp_path: Path, record: Path) -> None:
    """Concurrent requests for a failing model share one attempt and get the same error."""
    fail = tmp_path / "fail-now"
    model = fake_model(free_port(), "--exit-at-once", "4", "--exit-when", str(fail),
                       record=record)
    with stack(tmp_path, {"m": model}) as s:

        async def herd() -> list[tuple[int, str]]:
            async with aiohttp.ClientSession() as http:

                async def one() -> tuple[int, str]:
                    async with http.get(f"http://127.0.0.1:{s.nginx_port}/m/x") as r:
                        return r.status, (await r.json())["detail"]

                async def fail_once_all_wait() -> None:
                    while (await asyncio.to_thread(s.status))["m"]["held"] < 20:
                        await asyncio.sleep(0.02)
                    fail.touch()

                got = await asyncio.wait_for(
                    asyncio.gather(*(one() for _ in range(20)), fail_once_all_wait()), 60)
                return list(got[:20])

        results = asyncio.run(herd())
        assert {status for status, _ in results} == {503}
        assert len({detail for _, detail in results}) == 1
        assert len(starts(record)) == 1


def test_daemon_down_gives_json_503(tmp_path: Path, record: Path) -> None:
    """With the daemon down, a cold request gets nginx's JSON 503 with Retry-After."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.stop_daemon() == 0
        resp = s.get("/m/x")
        assert resp.status == 503
        assert resp.headers["retry-after"] == "5"
        assert resp.json()["error"] == "starter_unavailable"


def test_crash_during_post_is_not_replayed(tmp_path: Path, record: Path) -> None:
    """A model crashing while handling a POST: the POST reaches it once; client gets 502 JSON."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.get("/m/warmup").status == 200
        resp = s.call("POST", "/m/crash", body=b"charge the card")
        assert resp.status == 502
        assert resp.json()["error"] == "not_replayed"
        assert "retry-after" not in resp.headers
        assert len(model_requests(record, "/crash")) == 1
        # The next request restarts the model.
        assert s.get("/m/after").status == 200
        assert len(starts(record)) == 2


def test_crash_during_get_is_replayed_once_after_restart(tmp_path: Path, record: Path) -> None:
    """An idempotent request that crashed the model is replayed once on a fresh process."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.get("/m/warmup").status == 200
        resp = s.get("/m/crash")
        assert resp.status == 502
        assert resp.json()["error"] == "model_unavailable"
        assert len(model_requests(record, "/crash")) == 2
        assert len(starts(record)) == 2


def test_sigterm_stops_every_model(tmp_path: Path, record: Path) -> None:
    """SIGTERM: the daemon stops its models (KILL after stop_timeout) and exits 0."""
    models = {
        "a": fake_model(free_port(), record=record),
        "b": fake_model(free_port(), "--ignore-sigterm", record=record),
    }
    models["b"]["stop_timeout"] = 1
    with stack(tmp_path, models, extra={"resources": {"gpu": 1}}) as s:  # both fit
        assert s.get("/a/x").status == 200
        assert s.get("/b/x").status == 200
        pids = [r["pid"] for r in starts(record)]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        assert s.stop_daemon(signal.SIGTERM) == 0
        assert not any(pid_alive(p) for p in pids)


def test_seed_literal_codes_without_nginx(tmp_path: Path, record: Path) -> None:
    """Called directly (no mode header): 504 when it had to start, 204 when already running."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.direct("POST", "/m/v1/x").status == 504
        assert s.direct("POST", "/m/v1/x").status == 204
        retry = {"X-Model-Starter-Mode": "retry"}
        assert s.direct("GET", "/m/v1/x", headers=retry).status == 504


def test_model_port_taken_by_foreign_process(tmp_path: Path, record: Path) -> None:
    """A port held by a process that is not ours is a clear 503; nothing is spawned."""
    port = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        model = fake_model(port, "--listen-delay", "0", record=record)
        model["health"] = "/health"
        model["startup_timeout"] = 2
        with stack(tmp_path, {"m": model}) as s:
            resp = s.direct("GET", "/m/x")
            assert resp.status == 503
            data = resp.json()
            assert data["error"] == "port_in_use"
            assert f"port {port} in use by pid {os.getpid()}" in data["detail"]
            assert starts(record) == []


def test_every_nginx_variant_passes_nginx_t(tmp_path: Path) -> None:
    """Both include styles pass `nginx -t`."""
    models = {"chat.v1": fake_model(free_port()), "emb-2": fake_model(free_port())}
    for style in ("conf.d", "locations"):
        d = tmp_path / style
        d.mkdir()
        s = Stack(d, models, style=style)
        s.write_config()
        result = s.nginx_test()
        assert result.returncode == 0, result.stderr


def test_fakemodel_is_used_directly() -> None:
    """The test model starts and answers /health (sanity of the harness itself)."""
    port = free_port()
    proc = subprocess.Popen(["python3", FAKEMODEL, "--port", str(port)])
    try:
        wait_for(lambda: port_open(port), 5, "fakemodel")
        assert request(port, "GET", "/health").status == 200
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.parametrize("style", ["locations"])
def test_locations_include_serves_models(tmp_path: Path, record: Path, style: str) -> None:
    """The locations-only include in an operator's server block starts models too."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}, style=style) as s:
        assert s.get("/m/v1/x?y=1").json()["path"] == "/v1/x?y=1"
        assert s.get("/nope/x").status == 404
