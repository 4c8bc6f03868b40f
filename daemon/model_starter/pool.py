"""All configured models: builds their supervisors and wires the components that act on
them — admission (`admission.py`), the activity monitor (`monitor.py`), live reload
(`reloader.py`) and the inference server the V2 models share (`inference.py`).

Each component gets what it uses (the models mapping, a callback), so the imports run
one way: pool -> components -> supervisor -> launchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from model_starter.admission import Admission
from model_starter.config import CommandSpec, Config, ModelSpec, ProcessSpec, V2Spec
from model_starter.events import Event, Listener, Reloaded, State
from model_starter.feedkey import FeedKeyError, activity_key
from model_starter.health import HealthChecker
from model_starter.inference import NAME as INFERENCE_NAME
from model_starter.inference import InferenceServerProcess
from model_starter.launchers import Launcher, ProcessLauncher, StartError
from model_starter.launchers.command import CommandLauncher
from model_starter.launchers.v2 import ServerCalls, V2Launcher
from model_starter.lifecycle import lifecycle_for
from model_starter.logfile import LogFile
from model_starter.monitor import ActivityMonitor
from model_starter.protocol import ActivityRule, per_model_activity
from model_starter.reloader import Reloader
from model_starter.routing import replay_source
from model_starter.sleeping import sleep_action_runner
from model_starter.supervisor import ModelSupervisor
from model_starter.usage import HeldTotal

__all__ = ["ModelPool"]

log = logging.getLogger("model_starter.pool")


class ModelPool:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.models: dict[str, ModelSupervisor] = {}
        self.listeners: list[Listener] = []
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._health: HealthChecker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.inference_server: InferenceServerProcess | None = None
        self._server_calls = ServerCalls()
        self.held_total = HeldTotal(config.max_held)
        self._reloader = Reloader(self.models, self._add, self._spawn)
        self.monitor = ActivityMonitor(lambda: self.models, self.shared_models,
                                       self._shared_port, self._reloader.apply_pending, clock,
                                       lambda: self._server_calls.under_way,
                                       lambda: per_model_activity(self.config.inference.host))
        self.admission = Admission(lambda: self.models, lambda: self.config.resources,
                                   self.monitor.refresh, clock)

    def get(self, name: str) -> ModelSupervisor | None:
        return self.models.get(name)

    def shared_models(self) -> dict[str, ModelSupervisor]:
        """The V2 models, by their name on the inference server."""
        return {sup.launcher.name: sup for sup in self.models.values()
                if isinstance(sup.launcher, V2Launcher)}

    def activity_rule(self, sup: ModelSupervisor) -> ActivityRule:
        """How the model's requests in flight are seen (the status shows it)."""
        if not isinstance(sup.launcher, V2Launcher):
            return "port"
        return "source_address" if per_model_activity(self.config.inference.host) \
            else "shared_server"

    def _shared_port(self) -> int | None:
        return self.config.inference.port if self.shared_models() else None

    async def open(self) -> None:
        # No keep-alive: our own probes must not linger as connections to the model.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        self._session = aiohttp.ClientSession(connector=connector)
        self._health = HealthChecker(self._session)
        server = self.config.inference
        if server.command and any(m.launcher == "v2" for m in self.config.models.values()):
            # The process the server runs in (its log: _inference.log); no model of its own.
            own = ProcessSpec(name=INFERENCE_NAME, command=server.command, host=server.host,
                             port=server.port, health=server.health,
                             startup_timeout=server.startup_timeout,
                             stop_timeout=server.stop_timeout, env=server.env, idle_timeout=0,
                             requires={})
            self.inference_server = InferenceServerProcess(
                server.host, server.port, server.health, server.startup_timeout,
                self._process_launcher(own), self._health, self._clock)
            await self.inference_server.adopt()
        for spec in self.config.models.values():
            self._add(spec)
        await asyncio.gather(*(sup.adopt() for sup in self.models.values()))
        if self.shared_models():
            await self._listen_feed(self.config)
        self._spawn(self.monitor.housekeep())
        self._spawn(self.monitor.watch())
        for sup in self.models.values():
            if sup.spec.preload and sup.state is not State.READY:
                self._spawn(_preload(sup))

    async def _listen_feed(self, config: Config) -> None:
        """Receive nginx's activity feed, with this state dir's key (see ``feedkey``)."""
        try:
            key = activity_key(config)
        except FeedKeyError as exc:
            log.error("cannot receive nginx activity log: %s", exc)
            return
        await self.monitor.listen(config.listen_host, config.listen_port, key)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        self._tasks = [t for t in self._tasks if not t.done()]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        return task

    def _add(self, spec: ModelSpec) -> ModelSupervisor:
        assert self._health is not None and self._session is not None
        sup = ModelSupervisor(spec, self._launcher(spec), self._health,
                              self.admission.make_room, self.config.release_grace, self._clock,
                              self.held_total)
        sup.lifecycle = lifecycle_for(spec, self.config.state_dir, self._session)
        sup.run_action = sleep_action_runner(spec, self._session)
        sup.replay_source = replay_source(self.config, spec)
        sup.refresh_activity = self.monitor.refresh
        sup.listeners.append(self._emit)
        self.models[spec.name] = sup
        return sup

    def _launcher(self, spec: ModelSpec) -> Launcher:
        if isinstance(spec, CommandSpec):
            return CommandLauncher(spec)
        if isinstance(spec, V2Spec):
            assert self._session is not None
            return V2Launcher(spec, self.config.inference, self._session, self.inference_server,
                              self._server_calls)
        assert isinstance(spec, ProcessSpec)
        return self._process_launcher(spec)

    def _process_launcher(self, spec: ProcessSpec) -> ProcessLauncher:
        logfile = LogFile(Path(self.config.log_dir) / f"{spec.name}.log", self.config.log_max_bytes)
        return ProcessLauncher(spec, logfile, Path(self.config.state_dir))

    def _emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    # -- live reload -----------------------------------------------------------------------

    async def reload(self, new: Config) -> dict[str, list[str]]:
        """Apply a validated config (see `reloader.Reloader`); returns what changed."""
        old = self.config
        if (new.listen_host, new.listen_port) != (old.listen_host, old.listen_port) or (
            new.inference != old.inference or new.log_dir != old.log_dir
            or new.state_dir != old.state_dir
        ):
            log.warning("listen, inference_server, log_dir and state_dir changes take effect "
                        "on the next restart")
        self.config = new = _keep_process_settings(new, old)
        self.held_total.limit = new.max_held
        summary = self._reloader.apply(new.models, new.release_grace)
        if self.shared_models() and not self.monitor.listening:
            await self._listen_feed(new)
        self._emit(Reloaded(added=tuple(summary["added"]), removed=tuple(summary["removed"]),
                            changed=tuple(summary["changed"]),
                            unchanged=tuple(summary["unchanged"])))
        log.info("reloaded %s: %s", new.source,
                 "; ".join(f"{k} {', '.join(v)}" for k, v in summary.items() if v) or "no models")
        return {kind: names for kind, names in summary.items()}

    async def close(self) -> None:
        """Stop every model this daemon runs, then release the HTTP client."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(sup.close() for sup in self.models.values()))
        if self.inference_server is not None:
            await self.inference_server.close()
        self.monitor.close()
        if self._session is not None:
            await self._session.close()


async def _preload(sup: ModelSupervisor) -> None:
    with contextlib.suppress(StartError):
        await sup.ensure_ready(replay=False)


def _keep_process_settings(new: Config, old: Config) -> Config:
    """Settings bound at daemon start stay as they are until a restart."""
    return dataclasses.replace(new, listen_host=old.listen_host, listen_port=old.listen_port,
                               inference=old.inference, log_dir=old.log_dir,
                               state_dir=old.state_dir)
