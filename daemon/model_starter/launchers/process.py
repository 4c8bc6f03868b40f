"""Run a model as a local child process in its own session and process group.

Each running model is recorded in ``state_dir/<name>.json`` (pid, the kernel's start
time of that pid, argv) so that a restarted daemon can adopt what it started before
instead of starting it twice or leaving it orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from model_starter.commands import run_command
from model_starter.config import ProcessSpec
from model_starter.launchers.base import FailureReason, LauncherKind, StartError
from model_starter.logfile import LogFile
from model_starter.netstat import listening_inodes, pids_holding

__all__ = ["ProcessLauncher", "model_environment"]

log = logging.getLogger("model_starter.launcher")

# The only variables a model inherits from the daemon; everything else comes from `env:`.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
UNKNOWN_STATUS = -255  # an adopted process is not our child: its exit status is unknowable


def model_environment(spec_env: Mapping[str, str], parent: Mapping[str, str]) -> dict[str, str]:
    """The environment of a model process: a minimal inherited set plus the configured one.

    The daemon's own interpreter directory (its venv's bin/) comes first on PATH, so
    `python3 -m ...` and console scripts installed beside model-starter resolve.
    """
    env = {k: parent[k] for k in INHERITED_ENV if k in parent}
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH", os.defpath)
    env["PATH"] = path if path.split(os.pathsep)[0] == bindir else f"{bindir}{os.pathsep}{path}"
    env.update(spec_env)
    return env


def port_taken(host: str, port: int) -> bool:
    """True when something listens on host:port (a bind with SO_REUSEADDR fails only then)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (guards against PID reuse), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


class ProcessLauncher:
    kind: LauncherKind = "process"
    owns_process = True

    def __init__(self, spec: ProcessSpec, logfile: LogFile, state_dir: Path) -> None:
        self.spec = spec
        self.logfile = logfile
        self.state_file = state_dir / f"{spec.name}.json"
        self._pid: int | None = None
        self._exited: asyncio.Future[int] | None = None

    @property
    def pid(self) -> int | None:
        return self._pid if self._exited is not None and not self._exited.done() else None

    @property
    def exited(self) -> asyncio.Future[int] | None:
        return self._exited

    @property
    def log_error(self) -> str | None:
        return self.logfile.error

    @property
    def activity_port(self) -> int | None:
        return self.spec.port

    async def start(self) -> None:
        spec = self.spec
        self._refuse_taken_port()
        fd = self.logfile.open_for_child()
        if fd is None:
            log.error("model=%s %s; output is discarded", spec.name, self.logfile.error)
        out = fd if fd is not None else subprocess.DEVNULL
        try:
            # Popen, not the loop's subprocess support: uvloop would hand the child our
            # listening socket (it does not close inherited fds), and a daemon restart
            # then finds its own port taken by a model.
            proc = subprocess.Popen(
                spec.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=spec.cwd,
                env=model_environment(spec.env, os.environ),
                close_fds=True,
                start_new_session=True,  # own group: stop reaches its children too
            )
        except OSError as exc:
            raise StartError(
                FailureReason.SPAWN_FAILED,
                f"cannot run {spec.command[0]!r}: {exc.strerror or exc}",
                retry_after=30,
            ) from None
        finally:
            if fd is not None:
                os.close(fd)
        self._watch(proc.pid, proc.wait)
        self._record(proc.pid)
        log.info("model=%s spawned pid=%d: %s", spec.name, proc.pid, " ".join(spec.command))

    def _refuse_taken_port(self) -> None:
        """A port someone else listens on would make nginx send our traffic to them."""
        if not port_taken(self.spec.host, self.spec.port):
            return  # the common case, in microseconds; /proc is read only to name the holder
        inodes = listening_inodes(self.spec.port)
        if not inodes:
            return
        pids = pids_holding(inodes)
        holder = f"pid {pids[0]}" if pids else "another process"
        raise StartError(
            FailureReason.PORT_IN_USE,
            f"port {self.spec.port} in use by {holder}, not started by model-starter",
            retry_after=30,
        )

    def _watch(self, pid: int, status: Callable[[], int]) -> None:
        """Resolve `exited` when `pid` ends (a pidfd turns readable: no child watcher needed)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        pidfd = os.pidfd_open(pid)

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._gone(pid, fut, status())

        loop.add_reader(pidfd, on_exit)
        self._pid, self._exited = pid, fut

    def _gone(self, pid: int, fut: asyncio.Future[int], status: int) -> None:
        # Whatever the leader left behind in its group must not outlive it.
        _killpg(pid, signal.SIGKILL)
        self._forget(pid)
        if not fut.done():
            fut.set_result(status)

    # -- adoption ----------------------------------------------------------------------------

    def _record(self, pid: int) -> None:
        data = {"pid": pid, "start_time": process_start_time(pid), "command": self.spec.command,
                "port": self.spec.port}
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.error("model=%s cannot record pid in %s: %s", self.spec.name, self.state_file, exc)

    def _forget(self, pid: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.state_file.read_text()).get("pid") == pid:
                self.state_file.unlink()

    def recorded(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    async def adopt(self) -> bool:
        """Take over a process an earlier daemon started.

        A recorded process that is gone, reused by someone else, or runs another
        command than the config now says, is not adopted (the latter is stopped).
        """
        data = self.recorded()
        if data is None:
            return False
        pid = data["pid"]
        if process_start_time(pid) != data.get("start_time"):
            self.state_file.unlink(missing_ok=True)  # gone, or the pid now belongs to another
            return False
        if list(data.get("command", [])) != list(self.spec.command):
            log.info("model=%s recorded pid %d runs an old command; stopping it", self.spec.name,
                     pid)
            _killpg(pid, signal.SIGKILL)
            self.state_file.unlink(missing_ok=True)
            return False
        try:
            self._watch(pid, lambda: UNKNOWN_STATUS)
        except OSError:
            self.state_file.unlink(missing_ok=True)
            return False
        return True

    # -- stop --------------------------------------------------------------------------------

    async def stop(self) -> None:
        pid, exited = self._pid, self._exited
        if pid is None or exited is None or exited.done():
            return
        spec = self.spec
        if spec.stop_command:
            await self._run_stop_command(pid, spec.stop_command)
        else:
            _killpg(pid, spec.stop_signal)
        try:
            await asyncio.wait_for(asyncio.shield(exited), spec.stop_timeout)
        except TimeoutError:
            log.warning("model=%s pid=%d still running %.1fs after stop; sending SIGKILL",
                        spec.name, pid, spec.stop_timeout)
            _killpg(pid, signal.SIGKILL)
            await asyncio.shield(exited)

    async def _run_stop_command(self, pid: int, argv: tuple[str, ...]) -> None:
        env = model_environment(self.spec.env, os.environ)
        env.update(MODEL_STARTER_PID=str(pid), MODEL_STARTER_MODEL=self.spec.name)
        try:
            status, out = await run_command(argv, self.spec.stop_timeout, env)
        except (OSError, TimeoutError) as exc:
            log.warning("model=%s stop_command failed (%s); sending %s", self.spec.name,
                        str(exc) or type(exc).__name__, signal.Signals(self.spec.stop_signal).name)
            _killpg(pid, self.spec.stop_signal)
            return
        if status:
            log.warning("model=%s stop_command exited %s: %s", self.spec.name, status,
                        out.strip()[-500:])

    def tail(self, lines: int = 20) -> list[str]:
        return self.logfile.tail(lines)

    def maintain(self) -> None:
        self.logfile.enforce_bound()

    def replay_safe(self, first_status: int | None) -> bool:
        return False

    async def server_state(self) -> str | None:
        return None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
