"""Faults with real processes through real nginx, and the security defaults."""

from __future__ import annotations

import http.client
import os
import re
import stat
import sys
import threading
from pathlib import Path

from model_starter.config import parse_config
from model_starter.launchers.process import INHERITED_ENV
from tests.stack import ROOT, fake_model, free_port, read_records, stack, wait_for


def test_crash_mid_stream_ends_the_stream_and_is_not_replayed(tmp_path: Path,
                                                               record: Path) -> None:
    """A model dying mid-stream: the client sees the stream end early; the POST ran once."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.get("/m/warmup").status == 200
        conn = http.client.HTTPConnection("127.0.0.1", s.nginx_port, timeout=30)
        conn.request("POST", "/m/crash-stream?after=1&interval=0.1", body=b"{}")
        resp = conn.getresponse()
        assert resp.status == 200
        events: list[bytes] = []
        try:
            while line := resp.readline():
                if line.startswith(b"data:"):
                    events.append(line)
        except (http.client.IncompleteRead, ConnectionError):
            pass  # how a cut chunked stream may surface; the events tell the rest
        conn.close()
        assert len(events) >= 3  # it streamed for a while ...
        assert b"[DONE]" not in b"".join(events)  # ... and never finished
        reqs = [r for r in read_records(record)
                if r["event"] == "request" and r["path"].startswith("/crash-stream")]
        assert len(reqs) == 1
        wait_for(lambda: s.status()["m"]["state"] == "stopped", 5, "crash noticed")
        assert s.get("/m/again").status == 200  # the next request restarts it


def test_nginx_reload_while_requests_are_held(tmp_path: Path, record: Path) -> None:
    """nginx reloads (SIGHUP) while requests wait for a start: they still complete."""
    model = fake_model(free_port(), "--listen-delay", "1.5", record=record)
    with stack(tmp_path, {"m": model}) as s:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(s.get("/m/x").status))
                   for _ in range(5)]
        for t in threads:
            t.start()
        wait_for(lambda: s.status()["m"]["held"] == 5, 10, "held requests")
        s.reload_nginx()
        for t in threads:
            t.join(30)
        assert results == [200] * 5
        assert s.get("/m/y").status == 200


def test_unwritable_log_dir_model_still_starts(tmp_path: Path, record: Path) -> None:
    """An unwritable log file does not stop the model; the status reports the problem."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log folder should be")
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)},
               extra={"log_dir": str(blocker / "logs")}) as s:
        assert s.get("/m/x").status == 200
        st = s.status()["m"]
        assert st["state"] == "ready"
        assert "cannot write log file" in st["log_error"]
        assert "cannot write log file" in s.daemon_log()


def test_log_files_are_not_world_readable(tmp_path: Path, record: Path) -> None:
    """Model logs are created 0640 (prompts may end up in them)."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        assert s.get("/m/x").status == 200
        mode = stat.S_IMODE((tmp_path / "logs" / "m.log").stat().st_mode)
        assert mode & 0o007 == 0, oct(mode)


def test_model_environment_is_minimal(tmp_path: Path, record: Path) -> None:
    """A model inherits only the documented minimal set plus its configured env."""
    port = free_port()
    dump = tmp_path / "env.txt"
    script = ("import os, sys, json\n"
              f"open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
              f"os.execv(sys.executable, [sys.executable, {str(ROOT / 'tests' / 'fakemodel.py')!r},"
              f" '--port', '{port}'])\n")
    model = {"command": [sys.executable, "-c", script], "port": port, "env": {"MY_SETTING": "1"}}
    os.environ["MODEL_STARTER_TEST_SECRET"] = "must not leak"
    try:
        with stack(tmp_path, {"m": model}) as s:
            assert s.get("/m/x").status == 200
    finally:
        del os.environ["MODEL_STARTER_TEST_SECRET"]
    import json

    env = json.loads(dump.read_text())
    assert env["MY_SETTING"] == "1"
    assert "MODEL_STARTER_TEST_SECRET" not in env
    # Python itself may add a few (LC_CTYPE coercion); nothing else from the daemon.
    assert set(env) <= {*INHERITED_ENV, "MY_SETTING", "LC_CTYPE"}, sorted(env)


def test_daemon_binds_loopback_by_default() -> None:
    """Without `listen`, the daemon and the generated server bind 127.0.0.1."""
    cfg = parse_config("models: {m: {command: [x], port: 9001}}\n", environ={})
    assert cfg.listen_host == "127.0.0.1"
    assert cfg.nginx.listen.startswith("127.0.0.1:")


def test_no_shell_anywhere_in_the_product() -> None:
    """No subprocess call of the product goes through a shell."""
    for path in (ROOT / "daemon" / "model_starter").rglob("*.py"):
        text = path.read_text()
        assert "shell=True" not in text, path
        assert not re.search(r"\bos\.system\(|\bos\.popen\(", text), path


def test_sigkill_of_a_model_group_member_is_cleaned(tmp_path: Path, record: Path) -> None:
    """A model that spawns helpers: stopping it leaves none of its process group behind."""
    port = free_port()
    script = ("import subprocess, sys, os\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              f"os.execv(sys.executable, [sys.executable, {str(ROOT / 'tests' / 'fakemodel.py')!r},"
              f" '--port', '{port}', '--record', {str(record)!r}])\n")
    with stack(tmp_path, {"m": {"command": [sys.executable, "-c", script], "port": port}}) as s:
        pid = s.get("/m/pid").json()["pid"]
        pgid = os.getpgid(pid)
        s.direct("POST", "/_ms/models/m/stop")

        def group_gone() -> bool:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(group_gone, 5, "the whole process group to be gone")
