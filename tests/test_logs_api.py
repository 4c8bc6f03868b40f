"""`/_ms/logs/NAME` (tail, follow as SSE, bounds, guard) and `model-starter logs`."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.stack import Stack, fake_model, free_port, stack, wait_for
from tests.test_command_launcher import command_model

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Follow:
    """One `?follow=1` SSE stream to the daemon, read by a thread into `events`."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        if self.resp.status == 200:
            self.reader.start()

    def _read(self) -> None:
        event = "message"
        try:
            for raw in self.resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.events.append((event, json.loads(line[6:])))
        except (OSError, ValueError, http.client.HTTPException):
            return  # closed by the test (a cut chunk) or by the daemon

    def lines(self) -> list[str]:
        return [text for kind, data in self.events if kind == "lines" for text in data["lines"]]

    def close(self) -> None:
        if self.conn.sock is not None:  # the reader thread sees the end of the stream
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        if self.reader.is_alive():
            self.reader.join(10)
        self.conn.close()


def _said(s: Stack, model: str, text: str) -> None:
    assert s.get(f"/{model}/say?text={text}").status == 200


def test_tail_as_json_and_text(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        resp = s.direct("GET", "/_ms/logs/m")
        assert resp.status == 200 and resp.json()["lines"] == []  # never started: no log yet
        for i in range(5):
            _said(s, "m", f"line-{i}")
        # The model logs a request after answering it: wait for the last one's line.
        body = wait_for(lambda: (b := s.direct("GET", "/_ms/logs/m?lines=3").json())
                        and "text=line-4" in b["lines"][-1] and b, 10, "the last access line")
        assert body["model"] == "m" and body["path"].endswith("m.log")
        assert len(body["lines"]) == 3
        assert any("say: line-4" in line for line in body["lines"])
        text = s.direct("GET", "/_ms/logs/m?lines=200&format=text")
        assert text.headers["content-type"].startswith("text/plain")
        assert text.body.decode().endswith("\n")
        assert "say: line-0" in text.body.decode() and "listening on" in text.body.decode()
        plain = s.direct("GET", "/_ms/logs/m?lines=2", headers={"Accept": "text/plain"})
        assert plain.body.decode().count("\n") == 2
        assert s.direct("GET", "/_ms/logs/m?lines=0").json()["lines"] == []


def test_bad_requests_unknown_model_and_nginx(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        for query in ("lines=-1", "lines=abc", "lines=10001", "follow=1&seconds=0",
                      "follow=1&seconds=x"):
            resp = s.direct("GET", f"/_ms/logs/m?{query}")
            assert resp.status == 400, query
            assert resp.json()["error"] == "bad_request"
        resp = s.direct("GET", "/_ms/logs/nope")
        assert resp.status == 404 and resp.json()["error"] == "unknown_model"
        assert s.get("/_ms/logs/m").status == 404  # never through nginx


def test_follow_streams_new_lines_rotation_and_ends(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        _said(s, "m", "before")
        follow = Follow(s.daemon_port, "/_ms/logs/m?follow=1&lines=2")
        try:
            assert follow.resp.status == 200
            assert follow.resp.getheader("content-type", "").startswith("text/event-stream")
            wait_for(lambda: follow.events, 10, "the tail")
            assert any("say: before" in line for line in follow.lines())
            assert len(follow.events[0][1]["lines"]) == 2
            _said(s, "m", "after")
            wait_for(lambda: any("say: after" in x for x in follow.lines()), 10, "the new line")
            # A restart opens a fresh file (the old one becomes m.log.1): the follow goes on.
            assert s.direct("POST", "/_ms/models/m/stop").status == 200
            _said(s, "m", "second-run")
            wait_for(lambda: any("say: second-run" in x for x in follow.lines()), 10,
                     "the new run's line")
            assert ("rotated", {"model": "m"}) in follow.events
        finally:
            follow.close()
        short = Follow(s.daemon_port, "/_ms/logs/m?follow=1&lines=0&seconds=0.5")
        try:
            wait_for(lambda: any(kind == "end" for kind, _ in short.events), 10, "the end")
            assert short.events[-1] == ("end", {"model": "m", "reason": "lifetime"})
            assert short.events[0] == ("lines", {"model": "m", "lines": []})
        finally:
            short.close()


def test_follows_are_capped(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        follows = [Follow(s.daemon_port, "/_ms/logs/m?follow=1") for _ in range(8)]
        try:
            assert all(f.resp.status == 200 for f in follows)
            refused = s.direct("GET", "/_ms/logs/m?follow=1")
            assert refused.status == 429 and refused.headers["retry-after"] == "5"
            assert refused.json()["error"] == "too_many_followers"
            assert s.direct("GET", "/_ms/logs/m").status == 200  # the tail is not capped
            follows.pop().close()

            def one_more() -> bool:
                f = Follow(s.daemon_port, "/_ms/logs/m?follow=1")
                if f.resp.status == 200:
                    follows.append(f)
                    return True
                f.close()
                return False

            wait_for(one_more, 10, "a closed follow to free its place")
            # A stopping daemon ends every follow at once, saying why.
            assert s.stop_daemon() == 0
            for f in follows:
                wait_for(lambda f=f: any(kind == "end" for kind, _ in f.events), 10, "the end")
                assert f.events[-1] == ("end", {"model": "m", "reason": "shutdown"})
        finally:
            for f in follows:
                f.close()


def test_guard_token_and_page_assets(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)},
               extra={"admin_token": TOKEN}) as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = s.direct("GET", "/_ms/logs/m", headers=headers)
            assert resp.status == 401 and resp.json()["error"] == "unauthorized"
            assert s.direct("GET", "/_ms/logs/m?follow=1", headers=headers).status == 401
            assert s.direct("GET", "/_ms/ui/config.json", headers=headers).status == 401
        assert s.direct("GET", "/_ms/logs/m", headers=AUTH).status == 200
        assert s.direct("GET", "/_ms/ui/config.json", headers=AUTH).json() == {
            "resources": {"models": 1.0}}
        # The page's files hold no data: a browser loads them, then asks for the token.
        page = s.direct("GET", "/_ms/ui")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert s.direct("GET", "/_ms/ui/").status == 200
        for name in ("app.js", "api.js", "logs.js", "view.js"):
            js = s.direct("GET", f"/_ms/ui/{name}")
            assert js.status == 200 and js.headers["content-type"].startswith("text/javascript")
        assert s.direct("GET", "/_ms/ui/style.css").status == 200
        assert s.direct("GET", "/_ms/ui/secrets.txt").status == 401  # not a page file
        missing = s.direct("GET", "/_ms/ui/secrets.txt", headers=AUTH)
        assert missing.status == 404 and missing.json()["error"] == "not_found"
        assert s.get("/_ms/ui").status == 404  # never through nginx


def test_cli_logs_tail_follow_and_errors(tmp_path: Path, record: Path) -> None:
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)},
               extra={"admin_token": TOKEN}) as s:  # the CLI sends the config's token
        _said(s, "m", "one")
        _said(s, "m", "two")
        out = s.cli("logs", "m", "-n", "2")
        lines = out.stdout.splitlines()
        assert len(lines) == 2 and "say: two" in lines[0], out.stdout
        unknown = s.cli("logs", "nope", check=False)
        assert unknown.returncode == 1 and "no model named 'nope'" in unknown.stderr
        follow = subprocess.Popen(
            [sys.executable, "-m", "model_starter", "logs", "m", "-f", "-n", "1",
             "--config", str(s.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert follow.stdout is not None
            first = follow.stdout.readline()
            assert "GET /say?text=two" in first
            _said(s, "m", "three")
            seen = [follow.stdout.readline() for _ in range(2)]
            assert "say: three" in seen[0], seen
            follow.send_signal(signal.SIGINT)
            assert follow.wait(20) == 130
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()
        s.stop_daemon()
        down = s.cli("logs", "m", check=False)
        assert down.returncode == 1 and "not running" in down.stderr


def test_command_launcher_tail_from_memory_and_no_follow(tmp_path: Path, record: Path) -> None:
    """A `command` model has no log file: its tail is the start command's output."""
    with stack(tmp_path, {"svc": command_model(tmp_path, record)}) as s:
        assert s.get("/svc/x").status == 200
        lines = s.direct("GET", "/_ms/logs/svc").json()["lines"]
        assert any(line.startswith("[start] started ") for line in lines), lines
        resp = s.direct("GET", "/_ms/logs/svc?follow=1")
        assert resp.status == 409 and resp.json()["error"] == "not_followable"
