"""The CLI's view of a fleet: `status` asks every node's admin API, `start`/`stop` the
model's node, `reload` every node. Each call has a connect timeout: a node whose host does
not answer is marked unreachable instead of hanging the command.
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from model_starter.config import Config
from model_starter.config.nodes import NodeSpec
from model_starter.protocol import CLIENT_HEADER, AdminPath, admin_path

__all__ = ["READ_TIMEOUT", "fleet_call", "http_call"]

READ_TIMEOUT = 3600.0  # a start may hold for a whole model start


def http_call(method: str, host: str, port: int, path: str, token: str | None,
              connect_timeout: float, read_timeout: float = READ_TIMEOUT,
              ) -> tuple[int | None, Any]:
    """(status, JSON body), or (None, why) when nothing answered within the connect timeout."""
    conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        headers = {CLIENT_HEADER: "cli", **({"Authorization": f"Bearer {token}"} if token else {})}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw or b"{}")
        except ValueError:
            return resp.status, {"error": f"HTTP {resp.status}"}
    except TimeoutError:
        return None, f"no answer within {connect_timeout:g}s"
    except OSError as exc:
        return None, str(exc)
    finally:
        conn.close()


def _node_call(config: Config, node: NodeSpec, method: str, path: str) -> tuple[int | None, Any]:
    host, port = node.daemon
    return http_call(method, host, port, path, config.admin_token,
                     config.nginx.connect_timeout)


def _status(config: Config) -> tuple[int, dict[str, Any]]:
    nodes = list(config.nodes.values())
    with ThreadPoolExecutor(max_workers=len(nodes) or 1) as pool:
        answers = list(pool.map(lambda n: _node_call(config, n, "GET", admin_path("status")),
                                nodes))
    models: list[dict[str, Any]] = []
    report: list[dict[str, Any]] = []
    for node, (code, body) in zip(nodes, answers, strict=True):
        ok = code == 200
        entry: dict[str, Any] = {"node": node.name, "daemon": node.daemon_addr, "reachable": ok}
        if ok:
            models += [{**m, "node": node.name} for m in body.get("models", [])]
        else:
            entry["error"] = body if code is None else f"HTTP {code}: {body.get('detail', body)}"
            models += [{"name": n, "node": node.name, "state": "unreachable", "port": m.port,
                        "held": "-", "starts": "-"}
                       for n, m in config.models.items() if m.node == node.name]
        report.append(entry)
    return (200 if all(e["reachable"] for e in report) else 503,
            {"models": models, "nodes": report})


def fleet_call(config: Config, cmd: str, model: str | None) -> tuple[int | None, Any]:
    """What `_client` does for one daemon, done across the fleet."""
    if cmd == "status":
        return _status(config)
    if cmd == "reload":
        answers = {n.name: _node_call(config, n, "POST", admin_path("reload"))
                   for n in config.nodes.values()}
        ok = all(code == 200 for code, _ in answers.values())
        return 200 if ok else 503, {name: body for name, (_, body) in answers.items()}
    spec = config.models.get(model or "")
    if spec is None or spec.node is None:
        return 404, {"error": "unknown_model", "detail": f"no model named {model!r} is configured"}
    node = config.nodes[spec.node]
    action: AdminPath = "start" if cmd == "start" else "stop"
    code, body = _node_call(config, node, "POST", admin_path(action, spec.name))
    if code is None:
        return 503, {"error": "node_unreachable", "node": node.name, "detail": body}
    return code, body
