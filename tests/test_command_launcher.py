"""`launcher: command`: start/stop/status through real commands (detached process + pidfile)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.stack import FAKEMODEL, free_port, pid_alive, stack, starts, wait_for

# What an operator's wrapper around systemctl/docker/kubectl does, without them: start a
# detached server and return; stop it through its pidfile; status = is it alive.
START = """\
import os, subprocess, sys
FAKEMODEL = os.environ["FAKEMODEL"]
pidfile, port, record = sys.argv[1], sys.argv[2], sys.argv[3]
if os.environ.get("FAIL_START"):
    print("start: no such unit: model@" + port, file=sys.stderr)
    sys.exit(4)
proc = subprocess.Popen([sys.executable, FAKEMODEL, "--port", port, "--record", record],
                        start_new_session=True, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
open(pidfile, "w").write(str(proc.pid))
print("started", proc.pid)
"""
STOP = """\
import os, signal, sys
try:
    pid = int(open(sys.argv[1]).read())
except FileNotFoundError:
    sys.exit(0)
os.kill(pid, signal.SIGTERM)
os.unlink(sys.argv[1])
print("stopped", pid)
"""
STATUS = """\
import os, sys
try:
    os.kill(int(open(sys.argv[1]).read()), 0)
except (FileNotFoundError, ProcessLookupError, ValueError):
    sys.exit(3)
"""


def command_model(tmp: Path, record: Path, **extra: Any) -> dict[str, Any]:
    port = free_port()
    pidfile = tmp / f"model-{port}.pid"
    for name, text in (("start.py", START), ("stop.py", STOP), ("status.py", STATUS)):
        (tmp / name).write_text(text)
    return {
        "launcher": "command",
        "start": [sys.executable, str(tmp / "start.py"), str(pidfile), str(port), str(record)],
        "stop": [sys.executable, str(tmp / "stop.py"), str(pidfile)],
        "status": [sys.executable, str(tmp / "status.py"), str(pidfile)],
        "port": port,
        "startup_timeout": 10,
        **extra,
        "env": {"FAKEMODEL": FAKEMODEL, **extra.get("env", {})},
    }



def test_command_launcher_start_idle_stop(tmp_path: Path, record: Path) -> None:
    """A cold request runs `start`, waits for health, replays; idleness runs `stop`."""
    model = command_model(tmp_path, record, idle_timeout=1)
    with stack(tmp_path, {"svc": model}) as s:
        resp = s.call("POST", "/svc/v1/x?q=1", body=b"hello")
        assert resp.status == 200, resp
        assert resp.json()["path"] == "/v1/x?q=1"
        pids = [r["pid"] for r in starts(record)]
        assert len(pids) == 1
        st = s.status()["svc"]
        assert st["launcher"] == "command" and st["state"] == "ready"
        wait_for(lambda: s.status()["svc"]["state"] == "stopped", 8, "idle stop via command")
        wait_for(lambda: not pid_alive(pids[0]), 5, "the stop command to stop the model")
        assert s.status()["svc"]["stop_reason"] == "idle"


def test_failing_start_command_gives_503_with_its_output(tmp_path: Path, record: Path) -> None:
    """A start command that exits non-zero: 503 with its status and stderr."""
    model = command_model(tmp_path, record, env={"FAIL_START": "1"})
    with stack(tmp_path, {"svc": model}) as s:
        resp = s.get("/svc/x")
        assert resp.status == 503
        data = resp.json()
        assert data["error"] == "start_command_failed" and data["exit_status"] == 4
        assert "log_tail" not in data and data["request_id"]  # the output: status only
        log_tail = s.status()["svc"]["last_error"]["log_tail"]
        assert any("no such unit" in line for line in log_tail)
        assert "retry-after" in resp.headers


def test_status_command_lets_a_restarted_daemon_adopt(tmp_path: Path, record: Path) -> None:
    """With `status`, a daemon restarted after SIGKILL adopts the running model."""
    model = command_model(tmp_path, record)
    with stack(tmp_path, {"svc": model}) as s:
        assert s.get("/svc/x").status == 200
        s.daemon.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        s.daemon.wait()  # type: ignore[union-attr]
        s.start_daemon()
        assert s.status()["svc"]["state"] == "ready"
        assert s.get("/svc/y").status == 200
        assert len([r["pid"] for r in starts(record)]) == 1
        assert s.stop_daemon() == 0
    for pid in [r["pid"] for r in starts(record)]:
        wait_for(lambda pid=pid: not pid_alive(pid), 5, "stop on shutdown")
    assert not os.path.exists(tmp_path / f"model-{model['port']}.pid")


def test_dead_command_model_is_started_again(tmp_path: Path, record: Path) -> None:
    """A model that died behind our back (no process of ours to watch) is noticed by its
    failed health check when nginx cannot reach it, and started again."""
    model = command_model(tmp_path, record)
    with stack(tmp_path, {"svc": model}) as s:
        first = s.get("/svc/pid").json()["pid"]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not pid_alive(first), 5, "the model to die")
        resp = s.get("/svc/pid")
        assert resp.status == 200 and resp.json()["pid"] != first
        st = s.status()["svc"]
        assert st["crashes"] == 1 and st["starts"] == 2
