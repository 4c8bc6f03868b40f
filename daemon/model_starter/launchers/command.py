"""Drive a model that something else runs (a systemd unit, a container, a k8s deployment).

`start` and `stop` are argv lists run without a shell and must return once the model
is starting/stopping; readiness still comes from the model's `health` URL. An optional
`status` command (exit 0 = running) lets a restarted daemon adopt the model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import Literal

from model_starter.commands import run_command
from model_starter.config import CommandSpec
from model_starter.launchers.base import FailureReason, LauncherKind, StartError
from model_starter.launchers.process import model_environment

__all__ = ["CommandLauncher"]

log = logging.getLogger("model_starter.launcher")

OUTPUT_LINES = 200

Step = Literal["start", "stop", "status"]
TIMED_OUT: dict[Step, FailureReason] = {
    "start": FailureReason.START_TIMEOUT, "stop": FailureReason.STOP_TIMEOUT,
    "status": FailureReason.STATUS_TIMEOUT,
}


class CommandLauncher:
    kind: LauncherKind = "command"
    owns_process = False

    def __init__(self, spec: CommandSpec) -> None:
        self.spec = spec
        self._output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self._running = False

    @property
    def pid(self) -> int | None:
        return None

    @property
    def exited(self) -> asyncio.Future[int] | None:
        return None  # not our process: crashes show as failed health (see recheck)

    @property
    def log_error(self) -> str | None:
        return None  # no log file of ours

    @property
    def activity_port(self) -> int | None:
        return self.spec.port if self.spec.host in ("127.0.0.1", "localhost", "::1") else None

    async def _run(self, what: Step, argv: tuple[str, ...], timeout: float) -> tuple[int, list[str]]:
        env = model_environment(self.spec.env, os.environ)
        env["MODEL_STARTER_MODEL"] = self.spec.name
        try:
            status, out = await run_command(argv, timeout, env, self.spec.cwd)
        except OSError as exc:
            raise StartError(FailureReason.SPAWN_FAILED, f"cannot run {what} command {argv[0]!r}: "
                             f"{exc.strerror or exc}", retry_after=30) from None
        except TimeoutError:
            raise StartError(TIMED_OUT[what],
                             f"the {what} command of model '{self.spec.name}' did not finish "
                             f"within {timeout:g}s", log_tail=list(self._output)[-20:],
                             retry_after=30) from None
        lines = [f"[{what}] {line}" for line in out.splitlines()]
        self._output.extend(lines)
        return status, lines

    async def start(self) -> None:
        status, lines = await self._run("start", self.spec.start, self.spec.startup_timeout)
        if status != 0:
            raise StartError(
                FailureReason.START_COMMAND_FAILED,
                f"the start command of model '{self.spec.name}' exited with status {status}",
                exit_status=status, log_tail=lines[-20:], retry_after=10,
            )
        self._running = True

    async def stop(self) -> None:
        try:
            status, lines = await self._run("stop", self.spec.stop, self.spec.stop_timeout)
        except StartError as exc:
            log.error("model=%s %s", self.spec.name, exc.detail)
            return
        if status != 0:
            log.error("model=%s stop command exited with status %d: %s", self.spec.name, status,
                      " | ".join(lines[-5:]))
        self._running = False

    async def adopt(self) -> bool:
        if self.spec.status is None:
            return True  # the supervisor adopts it if its health URL answers
        try:
            status, _ = await self._run("status", self.spec.status, 30)
        except StartError:
            return False
        return status == 0

    def tail(self, lines: int = 20) -> list[str]:
        return list(self._output)[-lines:]

    def maintain(self) -> None:
        return None

    def replay_safe(self, first_status: int | None) -> bool:
        return False

    async def server_state(self) -> str | None:
        return None
