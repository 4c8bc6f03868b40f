"""What a web page, a client of nginx or another local user can send must not steer the
daemon (issue 11: items 2, 3, 4, 5, 8, 11 and 12's event-stream and v2_name bounds)."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import socket
import stat
from pathlib import Path

import pytest

from model_starter.config import ConfigError, parse_config
from model_starter.feedkey import FEED_KEY_FILE
from model_starter.monitor import ActivityMonitor
from model_starter.nginx import render
from model_starter.protocol import (
    CLIENT_HEADER,
    DAEMON_HEADERS,
    MAX_REQUEST_BYTES,
    MODE_HEADER,
    MODEL_HEADER,
    SENT_HEADER,
    STATUS_HEADER,
    parse_activity_datagram,
)
from tests.stack import fake_model, free_port, request, stack, starts, wait_for

KEY = "0123456789abcdef0123456789abcdef"
EVIL = "http://evil.example"


# -- item 3: web pages cannot drive the admin API or the start path --------------------------


def test_a_web_page_cannot_drive_the_admin_api(tmp_path: Path, record: Path) -> None:
    """No token: a form POST from another origin, a POST without our header or a JSON body,
    and any call under a rebound Host name are refused; the CLI's calls work."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.direct("POST", "/_ms/models/m/start").status == 200
        form = {"Origin": EVIL, "Content-Type": "text/plain"}
        stop = request(s.daemon_port, "POST", "/_ms/models/m/stop", body=b"x", headers=form)
        assert (stop.status, stop.json()["error"]) == (403, "forbidden")
        bare = request(s.daemon_port, "POST", "/_ms/models/m/stop")  # no header, no JSON
        assert bare.status == 403
        foreign = s.direct("POST", "/_ms/models/m/stop", headers={"Origin": EVIL})
        assert foreign.status == 403
        assert s.status()["m"]["state"] == "ready"
        rebound = {"Host": f"rebind.evil.example:{s.daemon_port}"}
        resp = request(s.daemon_port, "GET", "/_ms/status", headers=rebound)
        assert resp.status == 403 and b"argv" not in resp.body and b"models" not in resp.body
        for host in (f"localhost:{s.daemon_port}", f"127.0.0.1:{s.daemon_port}", "[::1]"):
            assert request(s.daemon_port, "GET", "/_ms/status",
                           headers={"Host": host}).status == 200, host
        own = {"Origin": f"http://127.0.0.1:{s.daemon_port}", "Content-Type": "application/json"}
        resp = request(s.daemon_port, "POST", "/_ms/models/m/stop", body=b"{}", headers=own)
        assert resp.status == 200 and s.status()["m"]["state"] == "stopped"


def test_configured_host_names_are_accepted(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)},
               extra={"allowed_hosts": ["starter.internal"]}) as s:
        ok = request(s.daemon_port, "GET", "/_ms/status", headers={"Host": "starter.internal"})
        assert ok.status == 200
        assert request(s.daemon_port, "GET", "/_ms/status",
                       headers={"Host": "other.internal"}).status == 403


def test_the_start_path_called_directly_is_guarded_too(tmp_path: Path, record: Path) -> None:
    """A page cannot start models through the daemon's port; nginx (its upstream Host and
    headers) and direct callers with our header can."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        img = request(s.daemon_port, "GET", "/m/x", headers={"Origin": EVIL})
        assert img.status == 403
        plain = request(s.daemon_port, "GET", "/m/x")
        assert plain.status == 403
        rebound = {"Host": "rebind.evil.example", CLIENT_HEADER: "x", MODEL_HEADER: "m"}
        assert request(s.daemon_port, "GET", "/m/x", headers=rebound).status == 403
        assert starts(record) == []
        assert s.get("/m/x").status == 200  # through nginx
        assert len(starts(record)) == 1


# -- item 2: no model log lines to clients -----------------------------------------------------


def test_a_failed_start_tells_a_client_no_log_line(tmp_path: Path, record: Path) -> None:
    """The model logs its argv (with a key) before it dies: the client's 503, through nginx
    in either mode, carries the reason and a request id only; status has the tail."""
    secret = "sk-do-not-leak"
    models = {}
    for name, mode in (("ep", "error_page"), ("ar", "auth_request")):
        model = fake_model(free_port(), "--exit-at-once", "3", record=record)
        model["command"] = [*model["command"], "--api-key", secret]
        models[name] = {**model, "mode": mode}
    with stack(tmp_path, models) as s:
        for name in models:
            resp = s.get(f"/{name}/x")
            assert resp.status == 503, name
            data = resp.json()
            assert secret.encode() not in resp.body and "log_tail" not in data, name
            assert re.fullmatch(r"[0-9a-f]{16}", data["request_id"]), data
            rid = data["request_id"]
            wait_for(lambda rid=rid: rid in s.daemon_log(), 10, "the failure logged")
        admin = s.direct("POST", "/_ms/models/ep/start")
        assert admin.status == 503 and "log_tail" in admin.json()  # the admin API has it


# -- item 5: a small request size limit --------------------------------------------------------


def test_the_daemon_refuses_a_large_body(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.daemon_port, timeout=30)
        try:
            conn.request("POST", "/_ms/reload", body=b"x" * (MAX_REQUEST_BYTES + 1),
                         headers={CLIENT_HEADER: "t", "Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        assert resp.status == 413 and b"Traceback" not in body
        assert starts(record) == []


# -- item 11: client headers never steer the daemon --------------------------------------------


def test_client_protocol_headers_never_reach_the_daemon(tmp_path: Path, record: Path) -> None:
    """Through nginx, `X-Model-Starter-Model: m` on an unknown path starts nothing."""
    forged = {MODEL_HEADER: "m", MODE_HEADER: "retry", SENT_HEADER: "1", STATUS_HEADER: "404"}
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        resp = s.get("/not-a-model/x", headers=forged)
        assert resp.status == 404 and resp.json()["error"] == "unknown_model"
        assert starts(record) == []


def _locations(text: str) -> list[str]:
    return re.findall(r"location [^{]*\{.*?\n\s*\}", text, re.S)


def test_every_location_talking_to_the_daemon_sets_every_header() -> None:
    """Generated locations that proxy to the daemon set or clear each protocol header."""
    config = parse_config(
        "models:\n"
        "  a: {command: [x], port: 9001}\n"
        "  b: {command: [x], port: 9002, mode: auth_request}\n"
        "  c: {launcher: v2}\n"
        "  d: {launcher: v2, mode: auth_request}\n", environ={})
    daemon = [loc for loc in _locations(render(config, KEY)) if "ms_starter" in loc]
    assert len(daemon) >= 7
    for loc in daemon:
        for header in DAEMON_HEADERS:
            assert f"proxy_set_header {header} " in loc, (header, loc)


# -- item 8: the activity feed is authenticated ------------------------------------------------


def test_activity_lines_without_the_key_are_ignored() -> None:
    line = b"<190>Dec  2 10:00:00 model_starter: %s /v2/models/m/infer"
    assert parse_activity_datagram(line % KEY.encode(), KEY) == "m"
    assert parse_activity_datagram(b"<190>Dec  2 10:00:00 model_starter: /v2/models/m/infer",
                                   KEY) is None
    assert parse_activity_datagram(line % (b"f" * 32), KEY) is None


def test_the_feed_key_is_private_and_in_the_log_format(tmp_path: Path) -> None:
    config = parse_config(f"state_dir: {tmp_path / 'state'}\nmodels:\n  c: {{launcher: v2}}\n",
                          environ={})
    text = render(config)
    key_file = tmp_path / "state" / FEED_KEY_FILE
    key = key_file.read_text().strip()
    assert f"log_format ms_activity '{key} $uri';" in text
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert render(config) == text  # the same key every time


# -- item 12: bounded event streams ------------------------------------------------------------


def test_event_streams_are_bounded(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)},
               extra={"max_event_streams": 2}) as s:
        conns = []
        try:
            for _ in range(2):
                conn = http.client.HTTPConnection("127.0.0.1", s.daemon_port, timeout=20)
                conn.request("GET", "/_ms/events")
                assert conn.getresponse().status == 200
                conns.append(conn)
            refused = s.direct("GET", "/_ms/events")
            assert refused.status == 429 and refused.json()["error"] == "too_many_streams"
            assert "retry-after" in refused.headers
        finally:
            for conn in conns:
                conn.close()


# -- item 4: every value that reaches nginx text is validated -----------------------------------


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml", environ=environ or {})
    return err.value.problems


@pytest.mark.parametrize(("text", "where"), [
    ('models:\n  c: {launcher: v2, v2_name: "x break; return 200 pwned; #"}\n',
     "c.yaml:2: models.c.v2_name"),
    ('models:\n  "foo\\n": {command: [x], port: 9001}\n', "c.yaml:2: models.foo"),
    ('models:\n  m: {command: [x], port: 9001, host: "127.0.0.1; return 200 x"}\n',
     "c.yaml:2: models.m.host"),
    ('inference_server: {host: "a b"}\nmodels:\n  c: {launcher: v2}\n',
     "c.yaml:1: inference_server.host"),
    ('listen: "x;y:8080"\nmodels:\n  m: {command: [x], port: 9001}\n', "c.yaml:1: listen"),
    ('nginx: {listen: "8000; return 200 x"}\nmodels:\n  m: {command: [x], port: 9001}\n',
     "c.yaml:1: nginx.listen"),
    ('models:\n  m: {command: [x], port: 9001, client_max_body_size: "1m\\n"}\n',
     "c.yaml:2: models.m.client_max_body_size"),
    ('models:\n  c: {launcher: v2}\n  d: {launcher: v2, v2_name: c}\n', "c.yaml:3: models.d"),
])
def test_values_reaching_nginx_are_validated(text: str, where: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(where) for p in problems), problems


def test_the_inference_host_from_the_environment_is_validated() -> None:
    problems = _problems("models:\n  c: {launcher: v2}\n",
                         {"INFERENCE_SERVER_HOST": "x;return 200 y"})
    assert any(p.startswith("$INFERENCE_SERVER_HOST:") for p in problems), problems


def test_listen_parameters_are_kept() -> None:
    config = parse_config("nginx: {listen: '[::1]:8000  default_server'}\n"
                          "models:\n  m: {command: [x], port: 9001}\n", environ={})
    assert "    listen [::1]:8000 default_server;\n" in render(config, KEY)


def test_the_daemon_counts_only_datagrams_with_the_key() -> None:
    """A forged activity line to the daemon's UDP port (anyone on the host can send one)
    counts for nothing; nginx's line, with the key, counts."""
    got: list[str] = []

    async def run() -> None:
        monitor = ActivityMonitor(dict, dict, lambda: None, lambda: None)
        monitor.request_finished = got.append  # type: ignore[method-assign]
        port = free_udp_port()
        await monitor.listen("127.0.0.1", port, KEY)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for line in (b"<190>Dec  2 10:00:00 model_starter: /v2/models/forged/infer",
                             b"<190>Dec  2 10:00:00 model_starter: %s /v2/models/m/infer" % (
                                 b"0" * 32),
                             b"<190>Dec  2 10:00:00 model_starter: %s /v2/models/real/infer" % (
                                 KEY.encode())):
                    sock.sendto(line, ("127.0.0.1", port))
            deadline = asyncio.get_running_loop().time() + 10
            while "real" not in got and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            monitor.close()

    asyncio.run(run())
    assert got == ["real"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
