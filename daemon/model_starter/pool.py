"""All configured models: their supervisors, the shared HTTP client, housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import aiohttp

from model_starter.config import Config, ModelSpec
from model_starter.health import HealthChecker
from model_starter.launchers import Launcher, ProcessLauncher
from model_starter.logfile import LogFile
from model_starter.supervisor import ModelSupervisor

__all__ = ["ModelPool"]

log = logging.getLogger("model_starter.pool")

HOUSEKEEPING_INTERVAL = 5.0


class ModelPool:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.models: dict[str, ModelSupervisor] = {}
        self._session: aiohttp.ClientSession | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    def get(self, name: str) -> ModelSupervisor | None:
        return self.models.get(name)

    async def open(self) -> None:
        # No keep-alive: our own probes must not linger as connections to the model.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        self._session = aiohttp.ClientSession(connector=connector)
        health = HealthChecker(self._session)
        for name, spec in self.config.models.items():
            self.models[name] = ModelSupervisor(spec, self._launcher(spec), health)
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())

    def _launcher(self, spec: ModelSpec) -> Launcher:
        logfile = LogFile(Path(self.config.log_dir) / f"{spec.name}.log", self.config.log_max_bytes)
        return ProcessLauncher(spec, logfile)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            for sup in self.models.values():
                try:
                    sup.maintain()
                except Exception:
                    log.exception("model=%s housekeeping failed", sup.spec.name)

    async def close(self) -> None:
        """Stop every model this daemon runs, then release the HTTP client."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        await asyncio.gather(*(sup.close() for sup in self.models.values()))
        if self._session is not None:
            await self._session.close()
