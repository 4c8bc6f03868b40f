"""Run a model as a local child process in its own session and process group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from model_starter.config import ModelSpec
from model_starter.launchers.base import StartError
from model_starter.logfile import LogFile
from model_starter.netstat import listening_inodes, pids_holding

__all__ = ["ProcessLauncher", "model_environment"]

log = logging.getLogger("model_starter.launcher")

# The only variables a model inherits from the daemon; everything else comes from `env:`.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")


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


class ProcessLauncher:
    kind = "process"

    def __init__(self, spec: ModelSpec, logfile: LogFile) -> None:
        self.spec = spec
        self.logfile = logfile
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Future[int] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and not self._is_done() else None

    @property
    def exited(self) -> asyncio.Future[int] | None:
        return self._exited

    def _is_done(self) -> bool:
        return self._exited is None or self._exited.done()

    async def start(self) -> None:
        spec = self.spec
        self._refuse_taken_port()
        fd = self.logfile.open_for_child()
        if fd is None:
            log.error("model=%s %s; output is discarded", spec.name, self.logfile.error)
        out = fd if fd is not None else asyncio.subprocess.DEVNULL
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *spec.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=spec.cwd,
                env=model_environment(spec.env, os.environ),
                start_new_session=True,  # own group: stop reaches its children too
            )
        except OSError as exc:
            raise StartError(
                "spawn_failed",
                f"cannot run {spec.command[0]!r}: {exc.strerror or exc}",
                retry_after=30,
            ) from None
        finally:
            if fd is not None:
                os.close(fd)
        self._exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().create_task(self._watch(self._proc, self._exited))
        log.info("model=%s spawned pid=%d: %s", spec.name, self._proc.pid, " ".join(spec.command))

    def _refuse_taken_port(self) -> None:
        """A port someone else listens on would make nginx send our traffic to them."""
        inodes = listening_inodes(self.spec.port)
        if not inodes:
            return
        pids = pids_holding(inodes)
        holder = f"pid {pids[0]}" if pids else "another process"
        raise StartError(
            "port_in_use",
            f"port {self.spec.port} in use by {holder}, not started by model-starter",
            retry_after=30,
        )

    async def _watch(self, proc: asyncio.subprocess.Process, fut: asyncio.Future[int]) -> None:
        status = await proc.wait()
        # Whatever the leader left behind in its group must not outlive it.
        _killpg(proc.pid, signal.SIGKILL)
        if not fut.done():
            fut.set_result(status)

    async def stop(self) -> None:
        proc, exited = self._proc, self._exited
        if proc is None or exited is None or exited.done():
            return
        _killpg(proc.pid, self.spec.stop_signal)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self.spec.stop_timeout)
        except TimeoutError:
            log.warning(
                "model=%s pid=%d ignored %s for %.1fs; sending SIGKILL",
                self.spec.name, proc.pid, signal.Signals(self.spec.stop_signal).name,
                self.spec.stop_timeout,
            )
            _killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(exited)

    def tail(self, lines: int = 20) -> list[str]:
        return self.logfile.tail(lines)

    def maintain(self) -> None:
        self.logfile.enforce_bound()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
