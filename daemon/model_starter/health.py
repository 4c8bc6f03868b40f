"""Readiness: the port accepts and the health path answers 2xx.

Polling starts at 2 ms and backs off to 5 ms for the first seconds (most models that
start fast start in that window), then to at most 20 ms, so readiness is seen within
20 ms of it happening; a refused connect on loopback costs microseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp

from model_starter.events import FailureReason
from model_starter.launchers.base import Launcher, StartError

__all__ = ["Health", "HealthChecker", "ReadinessFailed", "poll_intervals", "start_until_healthy"]

TAIL_LINES = 20

FIRST_INTERVAL = 0.002
EARLY_INTERVAL = 0.005
EARLY_SECONDS = 2.0
MAX_INTERVAL = 0.020


class ReadinessFailed(Exception):
    """The model's process ended before it became ready."""

    def __init__(self, status: int) -> None:
        super().__init__(f"exited with status {status}")
        self.status = status


def poll_intervals(first: float = FIRST_INTERVAL, cap: float = MAX_INTERVAL) -> Callable[[], float]:
    """Geometric backoff from `first` up to `cap`."""
    current = first / 1.5

    def nxt() -> float:
        nonlocal current
        current = min(cap, current * 1.5)
        return current

    return nxt


class Health(Protocol):
    """What the supervisor asks about readiness (HealthChecker; a fake in unit tests)."""

    async def probe(self, host: str, port: int, path: str, timeout: float = 5.0) -> str | None:
        ...

    async def wait_ready(
        self, host: str, port: int, path: str, deadline: float,
        exited: asyncio.Future[int] | None,
    ) -> str | None:
        ...


async def start_until_healthy(
    launcher: Launcher, health: Health, what: str, host: str, port: int, path: str,
    startup_timeout: float, deadline: float,
) -> None:
    """Start `launcher` and wait until `path` answers 2xx by `deadline` (monotonic).

    Raises StartError: `exited` when the process ends first, `startup_timeout` (after
    stopping it) when the deadline passes. `what` names it in the detail ("model 'a'").
    """
    await launcher.start()
    try:
        reason = await health.wait_ready(host, port, path, deadline, launcher.exited)
    except ReadinessFailed as exc:
        raise StartError(
            FailureReason.EXITED, f"{what} exited with status {exc.status} while starting",
            exit_status=exc.status, log_tail=launcher.tail(TAIL_LINES),
        ) from None
    if reason is not None:
        await launcher.stop()
        raise StartError(
            FailureReason.STARTUP_TIMEOUT,
            f"{what} was not healthy after {startup_timeout:g}s "
            f"(last check of {path}: {reason}); the process was stopped",
            log_tail=launcher.tail(TAIL_LINES),
            retry_after=max(5, int(startup_timeout)),
        )


class HealthChecker:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def probe(self, host: str, port: int, path: str, timeout: float = 5.0) -> str | None:
        """None when healthy, else a short reason ("connection refused", "HTTP 503")."""
        url = f"http://{_url_host(host)}:{port}{path}"
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
            ) as resp:
                await resp.read()
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except aiohttp.ClientConnectorError:
            return "connection refused"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def wait_ready(
        self,
        host: str,
        port: int,
        path: str,
        deadline: float,
        exited: asyncio.Future[int] | None,
    ) -> str | None:
        """Poll until healthy (returns None) or the deadline (returns the last reason).

        Raises ReadinessFailed the moment the process exits.
        """
        interval = poll_intervals(cap=EARLY_INTERVAL)
        early_until = time.monotonic() + EARLY_SECONDS
        reason: str | None = "not probed"
        while True:
            if exited is not None and exited.done():
                raise ReadinessFailed(exited.result())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return reason
            result = await self.probe(host, port, path, timeout=min(remaining, 5.0))
            if result is None:
                return None
            cut_short = remaining < 5.0 and result.startswith("TimeoutError")
            if reason == "not probed" or not cut_short:
                reason = result  # a probe cut short by the deadline says less than the last one
            if early_until and time.monotonic() > early_until:
                interval, early_until = poll_intervals(EARLY_INTERVAL, MAX_INTERVAL), 0.0
            pause = min(interval(), max(0.0, deadline - time.monotonic()))
            if exited is None:
                await asyncio.sleep(pause)
            else:
                # Wake at once if the process exits while we sleep.
                await asyncio.wait([exited], timeout=pause)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
