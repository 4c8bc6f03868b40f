"""Operations: metrics, events, token, CLI, live reload, JSON logs, shutdown with held requests."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import NGINX, Stack, fake_model, free_port, pid_alive, stack, starts, wait_for


def test_metrics_exposition_parses_and_counts(tmp_path: Path, record: Path) -> None:
    """/_ms/metrics is valid Prometheus text with starts, stops, waits and gauges."""
    models = {"a": fake_model(free_port(), record=record),
              "b": fake_model(free_port(), "--exit-at-once", "2", record=record)}
    with stack(tmp_path, models, extra={"resources": {"gpu": 2}}) as s:
        assert s.get("/a/x").status == 200
        assert s.get("/b/x").status == 503
        s.direct("POST", "/_ms/models/a/stop")
        resp = s.direct("GET", "/_ms/metrics")
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
        samples = {(m.name, tuple(sorted(smp.labels.items())), smp.name): smp.value
                   for m in text_string_to_metric_families(resp.body.decode())
                   for smp in m.samples}

        def value(sample: str, family: str, **labels: str) -> float:
            return samples[(family, tuple(sorted(labels.items())), sample)]

        assert value("model_starter_starts_total", "model_starter_starts", model="a") == 1
        assert value("model_starter_failed_starts_total", "model_starter_failed_starts",
                     model="b", reason="exited") == 1
        assert value("model_starter_stops_total", "model_starter_stops",
                     model="a", reason="manual") == 1
        assert value("model_starter_start_duration_seconds_count",
                     "model_starter_start_duration_seconds", model="a") == 1
        assert value("model_starter_cold_start_wait_seconds_count",
                     "model_starter_cold_start_wait_seconds", model="a") == 1
        assert value("model_starter_running_models", "model_starter_running_models") == 0
        assert value("model_starter_held_requests", "model_starter_held_requests", model="a") == 0
        assert s.get("/_ms/metrics").status == 404  # never through nginx


def test_event_stream_reports_state_changes(tmp_path: Path, record: Path) -> None:
    """The SSE stream sends a snapshot, then each state change with the model name."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.daemon_port, timeout=20)
        conn.request("GET", "/_ms/events")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-type", "").startswith("text/event-stream")
        events: list[dict[str, object]] = []

        def read() -> None:
            while len(events) < 4:
                line = resp.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: events, 10, "the snapshot")
        assert s.get("/m/x").status == 200
        reader.join(10)
        conn.close()
        assert events[0] == {**events[0], "event": "status", "model": "m", "state": "stopped"}
        states = [(e["old"], e["new"]) for e in events if e["event"] == "state"]
        assert ("stopped", "starting") in states and ("starting", "ready") in states
        assert any(e["event"] == "started" for e in events)


def test_admin_token(tmp_path: Path, record: Path) -> None:
    """With admin_token set, the admin API needs the bearer token; the CLI sends it."""
    models = {"m": fake_model(free_port(), record=record)}
    with stack(tmp_path, models, extra={"admin_token": "s3cret"}) as s:
        assert s.direct("GET", "/_ms/status").status == 401
        bad = s.direct("GET", "/_ms/status", headers={"Authorization": "Bearer nope"})
        assert bad.status == 401
        ok = s.direct("GET", "/_ms/status", headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200
        out = s.cli("status")
        assert out.returncode == 0 and "NAME" in out.stdout and "m " in out.stdout
        assert s.get("/m/x").status == 200  # the model route itself needs no token


def test_cli_start_stop_status_and_daemon_down(tmp_path: Path, record: Path) -> None:
    """CLI start/stop/status talk to the daemon; a stopped daemon is exit 1 with a message."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.cli("start", "m").returncode == 0
        table = s.cli("status").stdout
        assert "ready" in table
        assert s.cli("stop", "m").returncode == 0
        assert json.loads(s.cli("status", "--json").stdout)["models"][0]["state"] == "stopped"
        assert s.cli("start", "nope", check=False).returncode == 1
        s.stop_daemon()
        out = s.cli("status", check=False)
        assert out.returncode == 1
        assert "model-starter is not running" in out.stderr


def test_live_reload(tmp_path: Path, record: Path) -> None:
    """SIGHUP: a bad file changes nothing; a good one adds, removes, restarts changed models
    when idle, keeps unchanged ones, rewrites the nginx include; nothing in flight fails."""
    pa, pb, pc = free_port(), free_port(), free_port()
    s = Stack(tmp_path, {"a": fake_model(pa, record=record), "b": fake_model(pb, record=record)},
              extra={"resources": {"gpu": 4}})
    with s:
        conf = s.nginx_dir / "nginx.conf"
        s.nginx_extra = {"write_to": str(s.nginx_dir / "model-starter.conf"),
                         "reload_command": [NGINX, "-s", "reload", "-c", str(conf),
                                            "-p", str(s.nginx_dir)]}
        s.write_config()
        pid_a = s.get("/a/pid").json()["pid"]
        pid_b = s.get("/b/pid").json()["pid"]

        # A bad config is refused with file:line; the daemon keeps running on the old one.
        good = s.config_path.read_text()
        s.config_path.write_text(good + "bogus: 1\n")
        s.daemon.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: "reload refused" in s.daemon_log(), 10, "the refusal")
        assert f"{s.config_path}:" in s.daemon_log() and "bogus: unknown key" in s.daemon_log()
        assert s.cli("reload", check=False).returncode == 2  # the CLI checks the file too
        assert s.get("/a/pid").json()["pid"] == pid_a

        # Stream through a, which stays unchanged, while the reload happens.
        stream: dict[str, object] = {}

        def run_stream() -> None:
            c = http.client.HTTPConnection("127.0.0.1", s.nginx_port, timeout=30)
            c.request("GET", "/a/stream?seconds=3&interval=0.2")
            r = c.getresponse()
            stream["status"], stream["body"] = r.status, r.read()

        t = threading.Thread(target=run_stream)
        t.start()
        time.sleep(0.5)
        doc = yaml.safe_load(good)
        doc["models"]["b"]["command"] = [*doc["models"]["b"]["command"], "--unhealthy-for", "0"]
        doc["models"]["c"] = fake_model(pc, record=record)
        s.config_path.write_text(yaml.safe_dump(doc))
        s.daemon.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: "reloaded" in s.daemon_log(), 10, "the reload")
        # New model c is reachable through nginx (include rewritten, nginx reloaded).
        wait_for(lambda: s.get("/c/x").status == 200, 10, "model c through nginx")
        t.join(30)
        assert stream["status"] == 200 and b"[DONE]" in stream["body"]  # type: ignore[operator]
        # b changed: restarted once idle, with the new command.
        wait_for(lambda: not pid_alive(pid_b), 10, "b restarted")
        new_b = s.get("/b/pid").json()["pid"]
        assert new_b != pid_b
        assert s.get("/a/pid").json()["pid"] == pid_a  # unchanged keeps running
        # Removed models are stopped.
        del doc["models"]["a"]
        s.config_path.write_text(yaml.safe_dump(doc))
        assert s.cli("reload").returncode == 0
        wait_for(lambda: not pid_alive(pid_a), 10, "a stopped")
        assert s.get("/a/x").status == 404


def test_json_logs_carry_the_model(tmp_path: Path, record: Path) -> None:
    """--log-format json: every line is JSON; model lines have a model field."""
    s = Stack(tmp_path, {"m": fake_model(free_port(), record=record)})
    s.write_config()
    s.start_daemon("--log-format", "json")
    try:
        s.direct("POST", "/_ms/models/m/start")
    finally:
        s.close()
    lines = [json.loads(line) for line in s.daemon_log().splitlines() if line.strip()]
    assert any(rec.get("model") == "m" and "ready" in rec["message"] for rec in lines)
    assert all({"time", "level", "message"} <= rec.keys() for rec in lines)


def test_sigterm_with_held_requests(tmp_path: Path, record: Path) -> None:
    """Held requests get a clear 503 when the daemon stops; models stopped; no orphans."""
    model = fake_model(free_port(), "--listen-delay", "30", record=record)
    model["startup_timeout"] = 60
    with stack(tmp_path, {"m": model}) as s:
        results: list[object] = []

        def call() -> None:
            r = s.get("/m/x")
            results.append((r.status, r.json().get("error")))

        threads = [threading.Thread(target=call) for _ in range(5)]
        for t in threads:
            t.start()
        wait_for(lambda: s.status()["m"]["held"] == 5, 10, "held requests")
        pids = [r["pid"] for r in starts(record)]
        t0 = time.monotonic()
        assert s.stop_daemon() == 0
        for t in threads:
            t.join(10)
        assert time.monotonic() - t0 < 10
        assert results == [(503, "stopped")] * 5
        assert not any(pid_alive(p) for p in pids)


def test_help_lists_commands() -> None:
    """`model-starter --help` names every command."""
    out = subprocess.run([sys.executable, "-m", "model_starter", "--help"], capture_output=True,
                         text=True)
    for cmd in ("serve", "check", "nginx", "status", "start", "stop", "reload"):
        assert cmd in out.stdout


def test_admin_answers_loopback_clients_only() -> None:
    """Without a token the admin API accepts loopback peers only (e.g. in a container)."""
    from model_starter.wire import loopback as _loopback

    assert _loopback("127.0.0.1") and _loopback("127.8.9.10") and _loopback("::1")
    assert _loopback("::ffff:127.0.0.1")
    assert not _loopback("172.17.0.1") and not _loopback("10.0.0.5") and not _loopback("x")
