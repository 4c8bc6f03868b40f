"""The `nodes:` config, the node a daemon runs, and the front include it renders (no root
needed; the fleet itself runs in `test_fleet.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_starter.config import ConfigError, parse_config
from model_starter.fleet import narrow, peer_allowed
from model_starter.nginx import render
from model_starter.routing import route
from tests.stack import NGINX, nginx_conf

FLEET = """\
admin_token: t
nodes:
  gpu1: {daemon: "10.77.1.2:8080", allow: [10.77.1.1], resources: {gpu: 80}}
  gpu2: {daemon: "10.77.2.2:8080", host: 10.77.2.9}
models:
  a: {node: gpu1, port: 9001, command: [x], requires: {gpu: 70}}
  b: {node: gpu2, port: 9001, command: [x], mode: auth_request}
  v: {node: gpu2, launcher: v2}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", environ={})
    return info.value.problems


def test_nodes_place_models_on_their_hosts() -> None:
    cfg = parse_config(FLEET, "c.yaml", environ={})
    assert cfg.models["a"].host == "10.77.1.2"  # the node's daemon host by default
    assert cfg.models["b"].host == "10.77.2.9"  # the node's `host`
    assert cfg.nodes["gpu2"].allow == ("127.0.0.0/8", "::1/128")  # loopback by default
    assert route(cfg, cfg.models["v"]).address == "10.77.2.9:5002"  # the node's V2 server


@pytest.mark.parametrize(("text", "expected"), [
    (FLEET.replace("node: gpu1, ", ""), "models.a: missing required key 'node'"),
    (FLEET.replace("node: gpu1", "node: gpu9"), "models.a.node: unknown node 'gpu9'"),
    (FLEET.replace("requires: {gpu: 70}", "requires: {gpu: 90}"), "can never fit"),
    (FLEET.replace("allow: [10.77.1.1]", "allow: [nope]"), "expected an address or CIDR"),
    (FLEET.replace('daemon: "10.77.2.2:8080", ', ""), "missing required key 'daemon'"),
    ("models:\n  a: {node: x, port: 1, command: [x]}\n", "needs a top-level `nodes:`"),
    (FLEET + "resources: {gpu: 1}\n", "declare `resources` per node"),
])
def test_node_problems_are_reported(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_a_node_daemon_runs_its_own_models_and_capacity() -> None:
    cfg = parse_config(FLEET, "c.yaml", environ={})
    node = narrow(cfg, "gpu1")
    assert list(node.models) == ["a"] and node.resources == {"gpu": 80.0}
    assert (node.listen_host, node.listen_port, node.node) == ("10.77.1.2", 8080, "gpu1")
    assert list(narrow(cfg, "gpu2").models) == ["b", "v"]
    assert narrow(cfg, "gpu2").resources == {"models": 1.0}  # one at a time by default
    with pytest.raises(ConfigError, match="choose one with --node"):
        narrow(cfg, None)
    with pytest.raises(ConfigError, match="unknown node 'gpu9'"):
        narrow(cfg, "gpu9")


def test_start_route_peers() -> None:
    cfg = parse_config(FLEET, "c.yaml", environ={})
    assert peer_allowed(narrow(cfg, "gpu1"), "10.77.1.1")
    assert not peer_allowed(narrow(cfg, "gpu1"), "10.77.1.3")
    assert peer_allowed(narrow(cfg, "gpu2"), "127.0.0.1")
    assert not peer_allowed(narrow(cfg, "gpu2"), "10.77.2.1")
    single = parse_config("models:\n  a: {port: 1, command: [x]}\n", "c.yaml", environ={})
    assert peer_allowed(single, "10.1.2.3")  # one host: today's rule


def test_serve_refuses_a_fleet_config_without_a_node(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    out = subprocess.run([sys.executable, "-m", "model_starter", "serve", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "choose one with --node" in out.stderr
    env = {**os.environ, "MODEL_STARTER_NODE": "gpu9"}
    out = subprocess.run([sys.executable, "-m", "model_starter", "serve", "-c", str(path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "unknown node 'gpu9'" in out.stderr


def test_front_include_is_valid_nginx_and_answers_silent_nodes(tmp_path: Path) -> None:
    text = render(parse_config(FLEET, "c.yaml", environ={}))
    for upstream in ("ms_node_gpu1", "ms_node_gpu2", "ms_inference_gpu2"):
        assert f"upstream {upstream} {{" in text
    assert "error_page 502 504 = @ms_start_a;" in text  # a connect timeout starts too
    assert "proxy_connect_timeout 1000ms;" in text  # half of the default 2 s each
    assert "if ($upstream_http_x_model_starter != ready)" in text  # nginx's 504 never replayed
    assert '"node":"gpu2"' in text and "@ms_auth_failed_gpu2" in text
    (tmp_path / "ms.conf").write_text(text)
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, f"include {tmp_path}/ms.conf;"))
    out = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
