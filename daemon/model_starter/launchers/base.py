"""The launcher interface and the error every launcher raises when a start fails."""

from __future__ import annotations

import asyncio
from typing import Literal, Protocol

from model_starter.events import FailureReason

__all__ = ["FailureReason", "Launcher", "LauncherKind", "StartError"]

LauncherKind = Literal["process", "command", "v2"]


class StartError(Exception):
    """A start that failed; carries what the client and the status need to see."""

    def __init__(
        self,
        reason: FailureReason,
        detail: str,
        *,
        exit_status: int | None = None,
        log_tail: list[str] | None = None,
        retry_after: int = 5,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.exit_status = exit_status
        self.log_tail = log_tail or []
        self.retry_after = retry_after

    def as_json(self, model: str) -> dict[str, object]:
        return {
            "error": str(self.reason),
            "model": model,
            "detail": self.detail,
            "exit_status": self.exit_status,
            "log_tail": self.log_tail,
        }


class Launcher(Protocol):
    """Starts and stops one model. Readiness is checked by the supervisor, not here."""

    kind: LauncherKind
    owns_process: bool  # its `exited` is the model's own process (else: ask its health URL)

    @property
    def pid(self) -> int | None: ...

    @property
    def exited(self) -> asyncio.Future[int] | None:
        """Resolves with the exit status when the model's process ends (None: no process)."""

    @property
    def log_error(self) -> str | None:
        """Why the model's log cannot be written, if it cannot."""

    @property
    def activity_port(self) -> int | None:
        """A local TCP port whose connections are this model's requests (None: no such port)."""

    async def start(self) -> None:
        """Begin running the model; raise StartError if that is impossible."""

    async def adopt(self) -> bool:
        """Take over the model if an earlier daemon left it running (health is checked after)."""

    async def stop(self) -> None:
        """Stop the model; return once it is gone. Safe to call when not running."""

    def tail(self, lines: int = 20) -> list[str]:
        """The last lines of the model's log."""

    def replay_safe(self, first_status: int | None) -> bool:
        """Is a replay safe although the request reached the upstream, given the status of
        nginx's first attempt? (V2: the server's 400/404 means "not loaded": nothing ran.)"""

    async def server_state(self) -> str | None:
        """What the inference server says about this model (V2: its repository-index state);
        None for launchers without one."""

    def maintain(self) -> None:
        """Periodic housekeeping (log bounds); cheap and synchronous."""
