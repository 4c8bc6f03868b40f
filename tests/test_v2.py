"""`launcher: v2` against a real MLServer 1.7.1 (KServe V2 repository API) through nginx."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import mlserver
from tests.stack import Stack, free_port, stack, wait_for

pytestmark = pytest.mark.skipif(not mlserver.available(), reason=mlserver.SKIP_REASON)

JSON = {"Content-Type": "application/json"}


def v2_config(tmp: Path, names: list[str], *, run_server: bool = True,
              **model: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    http_port, grpc_port = free_port(), free_port()
    repo = mlserver.make_repository(tmp / "repo", [*names, "secret"], http_port=http_port,
                                    grpc_port=grpc_port)
    server: dict[str, Any] = {"host": "127.0.0.1", "port": http_port}
    if run_server:
        server.update(command=mlserver.mlserver_command(repo), startup_timeout=60,
                      env={"PYTHONUNBUFFERED": "1"})
    models = {n: {"launcher": "v2", "startup_timeout": 60, **model} for n in names}
    extra = {"inference_server": server, "resources": {"gpu": len(names)}}
    return models, extra, http_port


def infer(s: Stack, name: str) -> Any:
    return s.call("POST", f"/{name}/infer", body=json.dumps(mlserver.infer_body()).encode(),
                  headers=JSON)


def index(port: int) -> dict[str, str]:
    reply = mlserver.call(port, "POST", "/v2/repository/index", {})
    return {m["name"]: m.get("state", "") for m in reply.json()}


def loads(s: Stack, name: str) -> int:
    log = (s.tmp / "logs" / "_inference.log").read_text(errors="replace")
    return log.count(f"Loaded model '{name}' successfully")


def test_cold_v2_request_starts_server_and_loads_model(tmp_path: Path) -> None:
    """A cold V2 inference through nginx starts MLServer, loads the model, predicts."""
    models, extra, port = v2_config(tmp_path, ["iris"])
    with stack(tmp_path, models, extra=extra) as s:
        resp = infer(s, "iris")
        assert resp.status == 200, resp
        assert mlserver.predictions(resp.json()) == [mlserver.IRIS_PREDICTION]
        assert index(port)["iris"] == "READY"
        assert index(port)["secret"] != "READY"
        st = s.status()["iris"]
        assert st["state"] == "ready" and st["launcher"] == "v2"
        assert st["server_state"] == "READY"  # from the server's repository index
        # warm: straight to the server; metadata under the bare name
        assert infer(s, "iris").status == 200
        assert s.get("/iris").json()["name"] == "iris"
        assert loads(s, "iris") == 1


def test_concurrent_cold_v2_requests_load_once(tmp_path: Path) -> None:
    """30 concurrent cold inference requests: one load, 30 predictions."""
    models, extra, _ = v2_config(tmp_path, ["iris"])
    with stack(tmp_path, models, extra=extra) as s:

        async def herd() -> list[int]:
            async with aiohttp.ClientSession() as http:

                async def one() -> int:
                    url = f"http://127.0.0.1:{s.nginx_port}/iris/infer"
                    async with http.post(url, json=mlserver.infer_body()) as r:
                        body = await r.json()
                        assert mlserver.predictions(body) == [mlserver.IRIS_PREDICTION]
                        return r.status

                return await asyncio.gather(*(one() for _ in range(30)))

        assert asyncio.run(herd()) == [200] * 30
        assert loads(s, "iris") == 1


def test_idle_v2_model_is_unloaded(tmp_path: Path) -> None:
    """An idle V2 model is unloaded through the repository API; the next request reloads it."""
    models, extra, port = v2_config(tmp_path, ["iris"], idle_timeout=2)
    with stack(tmp_path, models, extra=extra) as s:
        assert infer(s, "iris").status == 200
        wait_for(lambda: s.status()["iris"]["state"] == "stopped", 10, "idle unload")
        assert s.status()["iris"]["stop_reason"] == "idle"
        assert index(port)["iris"] != "READY"
        assert mlserver.call(port, "GET", "/v2/models/iris/ready").status == 404
        assert infer(s, "iris").status == 200
        assert loads(s, "iris") == 2


def test_unknown_v2_model_is_never_loaded(tmp_path: Path) -> None:
    """A name that is in the server's repository but not in our config is a JSON 404."""
    models, extra, port = v2_config(tmp_path, ["iris"])
    with stack(tmp_path, models, extra=extra) as s:
        assert infer(s, "iris").status == 200
        resp = infer(s, "secret")
        assert resp.status == 404 and resp.json()["error"] == "unknown_model"
        assert index(port)["secret"] != "READY"


def test_inference_server_down_is_a_clear_503(tmp_path: Path) -> None:
    """No server running and no command to start it: 503 JSON naming the server."""
    models, extra, port = v2_config(tmp_path, ["iris"], run_server=False)
    with stack(tmp_path, models, extra=extra) as s:
        resp = infer(s, "iris")
        assert resp.status == 503
        data = resp.json()
        assert data["error"] == "inference_server_down"
        assert f"127.0.0.1:{port}" in data["detail"]
        assert "retry-after" in resp.headers


def test_genuine_v2_error_of_loaded_model_reaches_client(tmp_path: Path) -> None:
    """A loaded model's own 404 (a wrong path) is replayed once and then passed through."""
    models, extra, _ = v2_config(tmp_path, ["iris"])
    with stack(tmp_path, models, extra=extra) as s:
        assert infer(s, "iris").status == 200
        resp = s.get("/iris/versions/v9/ready")
        assert resp.status == 404
        assert "error" in resp.json() or "detail" in resp.json()
        assert loads(s, "iris") == 1


def test_model_unloaded_behind_our_back_is_loaded_again(tmp_path: Path) -> None:
    """Someone unloads a V2 model we think is loaded: the next request loads it again."""
    models, extra, port = v2_config(tmp_path, ["iris"])
    with stack(tmp_path, models, extra=extra) as s:
        assert infer(s, "iris").status == 200
        assert mlserver.call(port, "POST", "/v2/repository/models/iris/unload", {}).status == 200
        resp = infer(s, "iris")
        assert resp.status == 200, resp
        assert mlserver.predictions(resp.json()) == [mlserver.IRIS_PREDICTION]
        assert loads(s, "iris") == 2


def test_inference_server_crash_marks_models_down_then_recovers(tmp_path: Path) -> None:
    """The server the daemon runs dies: its V2 models are down at once; the next request
    starts the server again and reloads the model."""
    models, extra, _ = v2_config(tmp_path, ["iris"])
    with stack(tmp_path, models, extra=extra) as s:
        assert infer(s, "iris").status == 200
        server = s.direct("GET", "/_ms/status").json()["inference_server"]
        assert server["state"] == "ready"
        os.kill(server["pid"], signal.SIGKILL)
        wait_for(lambda: s.status()["iris"]["state"] == "stopped", 5, "the model marked down")
        assert s.status()["iris"]["stop_reason"] == "crash"
        resp = infer(s, "iris")
        assert resp.status == 200, resp
        assert mlserver.predictions(resp.json()) == [mlserver.IRIS_PREDICTION]
        assert s.direct("GET", "/_ms/status").json()["inference_server"]["pid"] != server["pid"]


def test_idle_v2_model_is_unloaded_beside_a_busy_one(tmp_path: Path) -> None:
    """iris idle while wine, on the same server, is under constant load: each V2 model's
    requests come from its own loopback source (proxy_bind), so iris is unloaded on time and
    wine never; the daemon's own calls to the server (loads, ready probes) never count."""
    models, extra, port = v2_config(tmp_path, ["iris", "wine"], idle_timeout=2)
    with stack(tmp_path, models, extra=extra) as s:
        assert infer(s, "iris").status == 200 and infer(s, "wine").status == 200
        assert {m["activity"] for m in s.status().values()} == {"source_address"}
        done = threading.Event()
        statuses: list[int] = []

        def load() -> None:
            while not done.is_set():
                statuses.append(infer(s, "wine").status)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            wait_for(lambda: s.status()["iris"]["state"] == "stopped", 15, "iris idle unload")
            st = s.status()
            assert st["iris"]["stop_reason"] == "idle" and st["wine"]["state"] == "ready"
            # wine keeps running for well past its idle_timeout under the load
            seen = len(statuses)
            wait_for(lambda: len(statuses) > seen + 400, 60, "400 more wine requests")
            assert s.status()["wine"]["state"] == "ready"
        finally:
            done.set()
            worker.join(30)
        assert set(statuses) == {200}
        assert loads(s, "wine") == 1 and loads(s, "iris") == 1
        assert index(port)["wine"] == "READY" and index(port)["iris"] != "READY"
