"""Run a model as a local child process in its own session and process group.

Each running model is recorded in ``state_dir/<name>.json`` (pid, the kernel's start
time of that pid, argv) so that a restarted daemon can adopt what it started before
instead of starting it twice or leaving it orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from model_starter.commands import INHERITED_ENV, model_environment, run_command
from model_starter.config import ProcessSpec
from model_starter.launchers.base import FailureReason, LauncherKind, StartError
from model_starter.logfile import LogFile
from model_starter.netstat import listening_inodes, pids_holding
from model_starter.statefile import Record, StateFile, is_ours, process_start_time

__all__ = ["INHERITED_ENV", "ProcessLauncher", "model_environment"]

log = logging.getLogger("model_starter.launcher")

UNKNOWN_STATUS = -255  # an adopted process is not our child: its exit status is unknowable


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


class ProcessLauncher:
    kind: LauncherKind = "process"
    owns_process = True

    def __init__(self, spec: ProcessSpec, logfile: LogFile, state_dir: Path) -> None:
        self.spec = spec
        self.logfile = logfile
        self.state = StateFile(state_dir, spec.name)
        self._pid: int | None = None
        self._record: Record | None = None  # what we started or adopted (identity for signals)
        self._child = False  # our own unreaped child: its pid cannot be anyone else's
        self._disown: Callable[[], None] = lambda: None  # stop watching a pid not ours now
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
            self.logfile.unwatch()
            raise StartError(
                FailureReason.SPAWN_FAILED,
                f"cannot run {spec.command[0]!r}: {exc.strerror or exc}",
                retry_after=30,
            ) from None
        finally:
            if fd is not None:
                os.close(fd)
        self._watch(proc.pid, proc.wait)
        self._child = True
        self._remember(proc.pid)
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

        def release(exit_status: int) -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._gone(pid, fut, exit_status)

        def on_exit() -> None:
            # Whatever the leader left behind in its group must not outlive it. The group's
            # id cannot be reused while members hold it (nor while our child is unreaped).
            _killpg(pid, signal.SIGKILL)
            release(status())

        loop.add_reader(pidfd, on_exit)
        self._pid, self._exited = pid, fut
        self._disown = lambda: release(UNKNOWN_STATUS)

    def _gone(self, pid: int, fut: asyncio.Future[int], status: int) -> None:
        self._record, self._child = None, False
        self._disown = lambda: None
        self.logfile.unwatch()
        self.state.remove(pid)
        if not fut.done():
            fut.set_result(status)

    def _signal(self, sig: int) -> None:
        """Signal the model's group, only while its leader is still the process we started
        (a recorded pid may have been reused, a state file may have been forged). One that
        is not is let go: it counts as exited, with an unknown status."""
        record = self._record
        if self._child and self._pid is not None:
            _killpg(self._pid, sig)
        elif record is not None and is_ours(record):
            _killpg(record.pid, sig)
        else:
            log.warning("model=%s pid %s is no longer the process model-starter started; "
                        "not signalled, no longer watched", self.spec.name, self._pid)
            self._disown()

    # -- adoption ----------------------------------------------------------------------------

    def _remember(self, pid: int) -> None:
        start = process_start_time(pid)
        if start is None:
            return  # already gone: `exited` resolves
        self._record = Record(pid, start, tuple(self.spec.command), self.spec.port)
        try:
            self.state.write(self._record)
        except OSError as exc:
            log.error("model=%s cannot record pid in %s: %s", self.spec.name, self.state.path,
                      exc.strerror or exc)

    async def adopt(self) -> bool:
        """Take over a process an earlier daemon started.

        A record that is invalid, whose process is gone or is not the one we started (see
        `statefile.is_ours`), is dropped; one that runs another command than the config now
        says is stopped.
        """
        record = self.state.read()
        if record is None:
            return False
        if not is_ours(record):
            self.state.remove()  # gone, or the pid now belongs to another
            return False
        self._record = record
        if record.command != tuple(self.spec.command):
            log.info("model=%s recorded pid %d runs an old command; stopping it", self.spec.name,
                     record.pid)
            self._signal(signal.SIGKILL)
            self._record = None
            self.state.remove()
            return False
        try:
            self._watch(record.pid, lambda: UNKNOWN_STATUS)
        except OSError:
            self._record = None
            self.state.remove()
            return False
        self.logfile.watch()
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
            self._signal(spec.stop_signal)
        try:
            await asyncio.wait_for(asyncio.shield(exited), spec.stop_timeout)
        except TimeoutError:
            log.warning("model=%s pid=%d still running %.1fs after stop; sending SIGKILL",
                        spec.name, pid, spec.stop_timeout)
            self._signal(signal.SIGKILL)
            await asyncio.shield(exited)

    async def _run_stop_command(self, pid: int, argv: tuple[str, ...]) -> None:
        env = model_environment(self.spec.env, os.environ)
        env.update(MODEL_STARTER_PID=str(pid), MODEL_STARTER_MODEL=self.spec.name)
        try:
            status, out = await run_command(argv, self.spec.stop_timeout, env)
        except (OSError, TimeoutError) as exc:
            log.warning("model=%s stop_command failed (%s); sending %s", self.spec.name,
                        str(exc) or type(exc).__name__, signal.Signals(self.spec.stop_signal).name)
            self._signal(self.spec.stop_signal)
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
