"""Reloads run one at a time, a hanging nginx reload command is killed and reported, and the
Daemon carries out a SIGHUP that came before it was ready. Real pool, real commands, real
signals; no HTTP server (the admin reload and SIGHUP share the one Reloader)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from model_starter import reload
from model_starter.commands import run_command
from model_starter.config import load_config
from model_starter.daemon import Daemon
from model_starter.nginx import render
from model_starter.pool import ModelPool
from model_starter.reload import Reloader
from tests.stack import FAKEMODEL, free_port, pid_alive

# A stand-in for `nginx -s reload` that records when it ran (and its pid), taking a while.
RECORDING_COMMAND = """
import os, sys, time
start = time.monotonic()
time.sleep(float(sys.argv[2]))
with open(sys.argv[1], "a") as fh:
    fh.write(f"{os.getpid()} {start} {time.monotonic()}\\n")
"""
def hanging_command(pidfile: Path) -> list[str]:
    """A command that starts a process of its own, writes both PIDs, and waits forever."""
    return ["sh", "-c", 'sleep 3600 & echo "$$ $!" > "$0.tmp"; mv "$0.tmp" "$0"; wait',
            str(pidfile)]


PORTS: dict[str, int] = {}


def _port(name: str) -> int:
    """One free port per name for the test session (a config rewrite keeps the ports)."""
    return PORTS.setdefault(name, free_port())


def _write_config(path: Path, models: list[str], reload_command: list[str]) -> None:
    path.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{_port('listen')}",
        "nginx": {"write_to": str(path.parent / "model-starter.conf"),
                  "reload_command": reload_command},
        "models": {name: {"command": [sys.executable, FAKEMODEL, "--port", "1"],
                          "port": _port(name)} for name in models},
    }))


@pytest.fixture
def sighup() -> Iterator[None]:
    """Restore the test process's SIGHUP disposition afterwards."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


async def _until(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_concurrent_reloads_run_one_at_a_time(tmp_path: Path) -> None:
    """Two reloads asked for at once (a SIGHUP and POST /_ms/reload share this Reloader):
    the second waits for the first, nginx reload command included, then reads the file
    afresh; their reload commands never overlap and the include ends up current."""
    record, script = tmp_path / "runs", tmp_path / "record.py"
    script.write_text(RECORDING_COMMAND)
    path = tmp_path / "config.yaml"
    command = [sys.executable, str(script), str(record), "0.5"]
    _write_config(path, ["a"], command)
    pool = ModelPool(load_config(str(path)))
    await pool.open()
    try:
        reloader = Reloader(pool, str(path))
        _write_config(path, ["a", "b"], command)
        first = asyncio.create_task(reloader.reload())
        await _until(lambda: reloader._lock.locked())
        _write_config(path, ["a", "b", "c"], command)  # the second reload must see this one
        second = asyncio.create_task(reloader.reload())
        results = await asyncio.gather(first, second)
    finally:
        await pool.close()
    assert [r["nginx"] for r in results] == ["written and reloaded"] * 2
    assert results[0]["added"] == ["b"] and results[1]["added"] == ["c"]
    runs = sorted(tuple(float(x) for x in line.split()[1:]) for line in
                  record.read_text().splitlines())
    assert len(runs) == 2
    (_, first_end), (second_start, _) = runs
    assert second_start >= first_end, f"the reload commands overlapped: {runs}"
    assert (tmp_path / "model-starter.conf").read_text() == render(pool.config)


async def test_hanging_reload_command_is_killed_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload, "RELOAD_COMMAND_TIMEOUT", 0.5)
    pidfile = tmp_path / "pid"
    path = tmp_path / "config.yaml"
    _write_config(path, ["a"], hanging_command(pidfile))
    pool = ModelPool(load_config(str(path)))
    await pool.open()
    try:
        _write_config(path, ["a", "b"], hanging_command(pidfile))
        result = await Reloader(pool, str(path)).reload()
    finally:
        await pool.close()
    assert result["ok"] is True and result["added"] == ["b"]  # the daemon's part took effect
    assert result["nginx"] == "reload failed: timed out after 0.5s"
    await _until(lambda: not any(pid_alive(int(pid)) for pid in pidfile.read_text().split()))


async def test_a_cancelled_command_ends_with_what_it_started(tmp_path: Path) -> None:
    """A shutdown cancels a reload (or a hook, or a start command) under way: the command
    and the processes it started are killed, not left running."""
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(run_command(hanging_command(pidfile), 60))
    await _until(pidfile.exists)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: not any(pid_alive(int(pid)) for pid in pidfile.read_text().split()))


async def test_sighup_before_ready_is_carried_out_once_running(
    tmp_path: Path, sighup: None
) -> None:
    """serve installs Daemon.record_reload before Sanic runs: a SIGHUP then is recorded,
    not fatal, and the reload happens once the loop runs (after READY)."""
    record, script = tmp_path / "runs", tmp_path / "record.py"
    script.write_text(RECORDING_COMMAND)
    path = tmp_path / "config.yaml"
    _write_config(path, ["a"], [sys.executable, str(script), str(record), "0"])
    daemon = Daemon(load_config(str(path)), str(path))
    signal.signal(signal.SIGHUP, daemon.record_reload)
    os.kill(os.getpid(), signal.SIGHUP)
    await _until(lambda: daemon.reload_requested)
    await daemon.startup()
    try:
        assert not record.exists()
        daemon.started()
        await _until(lambda: record.exists())  # the early SIGHUP's reload ran
        assert daemon.running and not daemon.reload_requested
        # Once running, SIGHUP is the loop's: it schedules another reload.
        _write_config(path, ["a", "b"], [sys.executable, str(script), str(record), "0"])
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: "b" in daemon.pool.models)
    finally:
        await daemon.shutdown()
    # While stopping (and after), a SIGHUP is only recorded.
    os.kill(os.getpid(), signal.SIGHUP)
    await _until(lambda: daemon.reload_requested)


def test_sighup_between_the_servers_two_runs_is_not_lost(tmp_path: Path, sighup: None) -> None:
    """Sanic runs its after_server_start listeners in ``run_until_complete``, then calls
    ``run_forever``; uvloop drops a signal for a loop handler that arrives in between. READY
    (and the loop's SIGHUP handler) wait until the server is serving, so a SIGHUP sent on
    READY, or in that gap, is carried out. (An asyncio loop here: uvloop, which Sanic uses
    and which loses that SIGHUP, leaves its SIGCHLD handling in the test process.)"""
    record, script = tmp_path / "runs", tmp_path / "record.py"
    script.write_text(RECORDING_COMMAND)
    path = tmp_path / "config.yaml"
    command = [sys.executable, str(script), str(record), "0"]
    _write_config(path, ["a"], command)
    daemon = Daemon(load_config(str(path)), str(path))
    signal.signal(signal.SIGHUP, daemon.record_reload)
    serving = False

    async def start() -> None:  # what Sanic runs before run_forever
        await daemon.startup()
        daemon.started(lambda: serving)

    async def reloaded() -> None:
        await _until(lambda: "b" in daemon.pool.models)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(start())
        assert not daemon.running  # no READY from the start-up run
        _write_config(path, ["a", "b"], command)
        os.kill(os.getpid(), signal.SIGHUP)  # between the two runs
        serving = True
        loop.run_until_complete(reloaded())  # stands for run_forever
        assert daemon.running
    finally:
        loop.run_until_complete(daemon.shutdown())
        loop.close()
