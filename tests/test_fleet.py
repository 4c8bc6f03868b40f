"""Several GPU hosts behind one front nginx, each host a network namespace of its own.

Each node namespace runs its own daemon (`serve --node`) and fake model processes; the front
nginx runs in the root namespace on 127.0.0.1 and reaches the nodes over veth pairs. All
addresses are loopback or on those veth pairs (see `tests/netns.py`). Needs root.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns import NetNode, fleet_network, ip, route_stays_local, tcp_open
from tests.stack import NGINX, NJS, Response, fake_model, free_port, nginx_conf, port_open, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

DAEMON_PORT = 8080
TOKEN = "fleet-test-token"


@dataclass
class Fleet:
    tmp: Path
    net: list[NetNode]
    record: Path
    front_port: int = field(default_factory=free_port)
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    nginx: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.tmp / "fleet.yaml"

    def write_config(self) -> None:
        n1, n2 = self.net

        def model(node: NetNode, port: int) -> dict[str, Any]:
            spec = fake_model(port, "--host", node.addr, record=self.record)
            return {**spec, "node": "gpu1" if node is n1 else "gpu2"}

        doc = {
            "admin_token": TOKEN,
            "nginx": {"listen": f"127.0.0.1:{self.front_port}", "connect_timeout": 2},
            "log_dir": str(self.tmp / "logs"),
            "state_dir": str(self.tmp / "state"),
            "nodes": {
                "gpu1": {"daemon": f"{n1.addr}:{DAEMON_PORT}", "allow": [n1.host_addr],
                         "resources": {"gpu": 80}},
                "gpu2": {"daemon": f"{n2.addr}:{DAEMON_PORT}", "allow": [n2.host_addr]},
            },
            # The same port on two hosts: placement, not ports, tells them apart.
            "models": {"a1": model(n1, 9001),
                       "a2": {**model(n1, 9002), "mode": "auth_request"},
                       "b1": model(n2, 9001)},
        }
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "model_starter", *args, "-c",
                               str(self.config)], capture_output=True, text=True, timeout=60)

    def start_daemon(self, name: str) -> subprocess.Popen[bytes]:
        node = self.net[0] if name == "gpu1" else self.net[1]
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(node.argv(
                sys.executable, "-m", "model_starter", "serve", "-c", str(self.config),
                "--node", name, "--log-level", "debug"), stdout=log, stderr=subprocess.STDOUT)
        self.daemons[name] = proc
        wait_for(lambda: tcp_open(node.addr, DAEMON_PORT) or proc.poll() is not None, 20,
                 f"the {name} daemon to listen")
        assert proc.poll() is None, (self.tmp / f"{name}.log").read_text()
        return proc

    def start_front(self) -> None:
        ngdir = self.tmp / "front"
        ngdir.mkdir()
        out = self.cli("nginx", "--output-dir", str(ngdir))
        assert out.returncode == 0, out.stderr
        conf = ngdir / "nginx.conf"
        conf.write_text(nginx_conf(ngdir, f"include {ngdir}/model-starter.conf;"))
        self.nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(ngdir)])
        wait_for(lambda: port_open(self.front_port), 10, "the front nginx to listen")

    def get(self, path: str, timeout: float = 60.0, method: str = "GET",
            body: bytes | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.front_port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                            resp.read())
        finally:
            conn.close()

    def status(self) -> tuple[int, dict[str, Any]]:
        out = self.cli("status", "--json")
        return out.returncode, json.loads(out.stdout)

    def close(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            self.nginx.wait(10)
        for proc in self.daemons.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def fleet(tmp_path: Path, record: Path) -> Iterator[Fleet]:
    with fleet_network(2) as net:
        f = Fleet(tmp_path, net, record)
        try:
            f.write_config()
            f.start_daemon("gpu1")
            f.start_daemon("gpu2")
            f.start_front()
            yield f
        finally:
            f.close()


def _models(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in status["models"]}


def _node_down(resp: Response, node: str) -> None:
    assert resp.status == 503, resp.body
    assert resp.headers["content-type"] == "application/json", resp.headers
    assert resp.headers.get("retry-after"), resp.headers
    assert resp.json()["node"] == node and resp.json()["error"] == "starter_unavailable"


def test_cold_starts_on_two_nodes_through_one_front(fleet: Fleet) -> None:
    a1, b1 = fleet.get("/a1/hello"), fleet.get("/b1/hello")
    assert a1.status == 200 and b1.status == 200, (a1.body, b1.body)
    assert a1.json()["path"] == "/hello" and a1.json()["pid"] != b1.json()["pid"]
    code, status = fleet.status()
    assert code == 0, status
    models = _models(status)
    assert (models["a1"]["node"], models["a1"]["state"], models["a1"]["pid"]) == (
        "gpu1", "ready", a1.json()["pid"])
    assert (models["b1"]["node"], models["b1"]["state"], models["b1"]["pid"]) == (
        "gpu2", "ready", b1.json()["pid"])
    assert models["a2"]["state"] == "stopped"
    assert [n["reachable"] for n in status["nodes"]] == [True, True]
    table = fleet.cli("status").stdout
    assert "NODE" in table and "gpu2" in table, table
    # start/stop act on the model's node.
    assert fleet.cli("stop", "b1").returncode == 0
    assert fleet.cli("start", "a2").returncode == 0
    models = _models(fleet.status()[1])
    assert models["b1"]["state"] == "stopped" and models["a2"]["state"] == "ready"
    if NJS:  # the OpenAI endpoint routes by the body's model to the model's node
        v1 = fleet.get("/v1/chat/completions", method="POST", body=b'{"model": "b1"}')
        assert v1.status == 200 and v1.json()["path"] == "/v1/chat/completions", v1.body
        assert v1.json()["pid"] == _models(fleet.status()[1])["b1"]["pid"]  # started cold
        names = [m["id"] for m in fleet.get("/v1/models").json()["data"]]
        assert names == ["a1", "a2", "b1"]
    # An unknown name is answered by the front itself (no daemon there).
    unknown = fleet.get("/nope/x")
    assert unknown.status == 404 and unknown.json()["error"] == "unknown_model"


def test_start_route_accepts_configured_peers_only(fleet: Fleet) -> None:
    n1 = fleet.net[0]
    ip("addr", "add", "10.77.1.3/24", "dev", n1.host_if)  # a peer not in gpu1's `allow:`
    conn = http.client.HTTPConnection(n1.addr, DAEMON_PORT, timeout=30,
                                      source_address=("10.77.1.3", 0))
    try:
        conn.request("GET", "/a1/")
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 403 and body["error"] == "forbidden", body
    # ... and the admin API wants the token from any non-loopback peer.
    conn = http.client.HTTPConnection(n1.addr, DAEMON_PORT, timeout=30)
    try:
        conn.request("GET", "/_ms/status")
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 401
    assert _models(fleet.status()[1])["a1"]["state"] == "stopped"  # nothing was started


def test_killed_node_daemon_gives_json_503_and_a_restart_adopts(fleet: Fleet) -> None:
    running = fleet.get("/a1/x")
    assert running.status == 200
    pid = running.json()["pid"]
    fleet.daemons["gpu1"].send_signal(signal.SIGKILL)
    fleet.daemons["gpu1"].wait(10)
    t0 = time.monotonic()
    _node_down(fleet.get("/a2/x"), "gpu1")  # auth_request mode asks the dead daemon
    print(f"killed node daemon answered 503 after {time.monotonic() - t0:.3f}s")
    assert fleet.get("/a1/x").json()["pid"] == pid  # a running model keeps serving
    assert fleet.get("/b1/x").status == 200  # the other node is unaffected
    code, status = fleet.status()
    assert code == 1 and not status["nodes"][0]["reachable"], status
    assert _models(status)["a1"]["state"] == "unreachable"
    fleet.start_daemon("gpu1")
    models = _models(fleet.status()[1])
    assert (models["a1"]["state"], models["a1"]["pid"]) == ("ready", pid)  # adopted
    assert fleet.get("/a2/x").status == 200


def test_silent_node_gives_json_503_within_the_connect_timeout(fleet: Fleet) -> None:
    assert fleet.get("/a1/x").status == 200
    b1_pid = fleet.get("/b1/x").json()["pid"]
    n2 = fleet.net[1]
    assert route_stays_local(n2.addr)  # the black hole is in place before any veth goes down
    n2.set_link("down")
    assert route_stays_local(n2.addr)
    t0 = time.monotonic()
    resp = fleet.get("/b1/x")
    took = time.monotonic() - t0
    _node_down(resp, "gpu2")
    print(f"silent node answered {resp.status} after {took:.2f}s")
    assert fleet.get("/a1/x").status == 200  # the other node is unaffected
    code, status = fleet.status()
    assert code == 1, status
    assert [n["reachable"] for n in status["nodes"]] == [True, False]
    assert _models(status)["b1"]["state"] == "unreachable"
    n2.set_link("up")  # back on the network: served again, by the same process
    back = wait_for(lambda: (r := fleet.get("/b1/x")).status == 200 and r, 10, "gpu2 back")
    assert back.json()["pid"] == b1_pid
