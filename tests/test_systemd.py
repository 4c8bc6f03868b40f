"""systemd integration: the unit verifies, and the daemon speaks the notify protocol."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import ROOT, Stack, fake_model, free_port

UNIT = ROOT / "systemd" / "model-orchestrator.service"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (with ExecStart pointing at this venv)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "model-orchestrator.service"
    venv_bin = str(Path(sys.executable).parent)
    unit.write_text(UNIT.read_text().replace("/opt/model-starter/.venv/bin", venv_bin))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "KillMode=mixed", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any(line.startswith(("PrivateDevices", "MemoryDenyWriteExecute"))
                   for line in settings)
    assert "DeviceAllow=char-nvidia-frontend rw" in settings
    # A group that may not exist on the host (render, without GPU drivers) fails the start
    # with 216/GROUP: the unit names none, the README shows the drop-in.
    assert not any(line.startswith("SupplementaryGroups") for line in settings)
    assert "ReadWritePaths=-/etc/nginx/model-starter" in settings


def test_nginx_reload_path_unit_verifies(tmp_path: Path) -> None:
    """The path unit that reloads nginx when the daemon rewrites its include, and its service,
    pass `systemd-analyze verify` and watch the folder the main unit may write."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = [ROOT / "systemd" / f"model-orchestrator-nginx.{kind}" for kind in ("path", "service")]
    for unit in units:
        shutil.copy(unit, tmp_path / unit.name)
    out = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in units)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "PathChanged=/etc/nginx/model-starter/model-starter.conf" in units[0].read_text()


@contextlib.contextmanager
def notified_daemon(tmp_path: Path) -> Iterator[tuple[Stack, socket.socket]]:
    """A daemon started with NOTIFY_SOCKET pointing at a real unix datagram socket."""
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(20)
        s = Stack(tmp_path, {"m": fake_model(free_port())})
        s.write_config()
        os.environ["NOTIFY_SOCKET"] = str(sock_path)
        try:
            s.start_daemon()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        try:
            yield s, sock
        finally:
            s.close()


def messages(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().splitlines()


def test_daemon_sends_ready_and_stopping(tmp_path: Path) -> None:
    """READY=1 once listening, STOPPING=1 on SIGTERM, over a real NOTIFY_SOCKET."""
    with notified_daemon(tmp_path) as (s, sock):
        assert "READY=1" in messages(sock)
        # It was listening by the time it said so.
        assert s.direct("GET", "/_ms/status").status == 200
        s.daemon.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert "STOPPING=1" in messages(sock)
        assert s.daemon.wait(30) == 0  # type: ignore[union-attr]


def test_reload_sends_reloading_then_ready(tmp_path: Path) -> None:
    """Around a reload the daemon notifies RELOADING=1 then READY=1."""
    with notified_daemon(tmp_path) as (s, sock):
        assert "READY=1" in messages(sock)
        s.daemon.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert "RELOADING=1" in messages(sock)
        assert "READY=1" in messages(sock)
