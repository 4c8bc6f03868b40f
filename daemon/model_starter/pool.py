"""All configured models: admission under capacity, activity, idle stops, housekeeping.

Starts are admitted one at a time (a lock): admission picks victims with the pure
`policy.choose_victims`, then asks each victim's owner to stop; an owner that became
busy in the meantime refuses, and admission looks again. Busy victims are waited
for (their in-flight requests finish) up to the starting model's startup_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from model_starter.activity import scan_ports
from model_starter.config import CommandSpec, Config, ModelSpec, ProcessSpec, V2Spec
from model_starter.feedkey import FeedKeyError, activity_key
from model_starter.health import HealthChecker
from model_starter.launchers import Launcher, ProcessLauncher, StartError
from model_starter.launchers.command import CommandLauncher
from model_starter.launchers.v2 import V2Launcher
from model_starter.logfile import LogFile
from model_starter.policy import Holder, choose_victims
from model_starter.protocol import parse_activity_datagram
from model_starter.supervisor import Event, ModelSupervisor, State

__all__ = ["ModelPool"]

log = logging.getLogger("model_starter.pool")

HOUSEKEEPING_INTERVAL = 5.0
ACTIVITY_INTERVAL = 0.5
DRAIN_POLL = 0.05


class ModelPool:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.models: dict[str, ModelSupervisor] = {}
        self.listeners: list[Callable[[Event], None]] = []
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._admission = asyncio.Lock()
        self.inference_server: ModelSupervisor | None = None
        self._health: HealthChecker | None = None
        self._pending: dict[str, ModelSpec] = {}  # changed by a reload, restarted when idle
        self._v2_names: dict[str, ModelSupervisor] = {}
        self._udp: asyncio.DatagramTransport | None = None

    def get(self, name: str) -> ModelSupervisor | None:
        return self.models.get(name)

    async def open(self) -> None:
        # No keep-alive: our own probes must not linger as connections to the model.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        self._session = aiohttp.ClientSession(connector=connector)
        health = self._health = HealthChecker(self._session)
        server = self.config.inference
        if server.command and any(m.launcher == "v2" for m in self.config.models.values()):
            # The inference server is supervised like a model (single-flight start, crash
            # detection, adoption, stop at shutdown), but it is no model of its own.
            own = ProcessSpec(name="_inference", command=server.command, host=server.host,
                              port=server.port, health=server.health,
                              startup_timeout=server.startup_timeout,
                              stop_timeout=server.stop_timeout, env=server.env, idle_timeout=0,
                              requires={})
            self.inference_server = ModelSupervisor(own, self._launcher(own), health)
            self.inference_server.listeners.append(self._emit)
            await self.inference_server.adopt()
        for spec in self.config.models.values():
            self._add(spec)
        await asyncio.gather(*(sup.adopt() for sup in self.models.values()))
        loop = asyncio.get_running_loop()
        if self._v2_names:
            await self._listen_activity_log()
        self._tasks = [loop.create_task(self._housekeep()), loop.create_task(self._watch_activity())]
        for sup in self.models.values():
            if sup.spec.preload and sup.state is not State.READY:
                self._tasks.append(loop.create_task(self._preload(sup)))

    def _add(self, spec: ModelSpec) -> ModelSupervisor:
        assert self._health is not None
        sup = ModelSupervisor(spec, self._launcher(spec), self._health, self._make_room,
                              self.config.release_grace, self._clock)
        sup.listeners.append(self._emit)
        self.models[spec.name] = sup
        if isinstance(spec, V2Spec):
            self._v2_names[spec.v2_name or spec.name] = sup
        return sup

    # -- live reload -----------------------------------------------------------------------

    async def reload(self, new: Config) -> dict[str, list[str]]:
        """Apply a validated config: new models at once, removed ones stopped, changed ones
        restarted once idle (in-flight work finishes first), unchanged ones untouched."""
        old = self.config
        if (new.listen_host, new.listen_port) != (old.listen_host, old.listen_port) or (
            new.inference != old.inference or new.log_dir != old.log_dir
            or new.state_dir != old.state_dir
        ):
            log.warning("listen, inference_server, log_dir and state_dir changes take effect "
                        "on the next restart")
        self.config = new = _keep_process_settings(new, old)
        summary: dict[str, list[str]] = {"added": [], "removed": [], "changed": [],
                                         "unchanged": []}
        for name in [n for n in self.models if n not in new.models]:
            sup = self.models.pop(name)
            self._v2_names = {k: v for k, v in self._v2_names.items() if v is not sup}
            self._pending.pop(name, None)
            summary["removed"].append(name)
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.get_running_loop().create_task(sup.close("removed")))
        for name, spec in new.models.items():
            current = self.models.get(name)
            if current is None:
                self._add(spec)
                summary["added"].append(name)
            elif current.spec != spec:
                self._pending[name] = spec
                summary["changed"].append(name)
            else:
                self._pending.pop(name, None)
                summary["unchanged"].append(name)
            self.models[name].release_grace = new.release_grace
        if self._v2_names and self._udp is None:
            await self._listen_activity_log()
        self._apply_pending()
        self._emit({"event": "reloaded", "model": "", "time": time.time(), **summary})
        log.info("reloaded %s: %s", new.source,
                 "; ".join(f"{k} {', '.join(v)}" for k, v in summary.items() if v) or "no models")
        return summary

    def _apply_pending(self) -> None:
        """Swap in changed specs of models that are not running; ask idle running ones to stop."""
        for name, spec in list(self._pending.items()):
            sup = self.models[name]
            if sup.idle_for_replacement():
                self._v2_names = {k: v for k, v in self._v2_names.items() if v is not sup}
                del self.models[name]
                new = self._add(spec)
                new.inherit(sup)
                del self._pending[name]
            elif sup.state is State.READY:
                task = sup.try_stop("reload")
                if task is not None:  # swap the moment it is down, before a request restarts it
                    task.add_done_callback(lambda _: self._apply_pending())

    def _emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    def _launcher(self, spec: ModelSpec) -> Launcher:
        if isinstance(spec, CommandSpec):
            return CommandLauncher(spec)
        if isinstance(spec, V2Spec):
            assert self._session is not None
            return V2Launcher(spec, self.config.inference, self._session, self.inference_server)
        assert isinstance(spec, ProcessSpec)
        logfile = LogFile(Path(self.config.log_dir) / f"{spec.name}.log", self.config.log_max_bytes)
        return ProcessLauncher(spec, logfile, Path(self.config.state_dir))

    async def _listen_activity_log(self) -> None:
        """nginx logs each finished V2 request here (syslog over UDP, on the daemon's own
        address): a shared server port cannot tell which model a connection is for."""
        loop = asyncio.get_running_loop()
        try:
            key = activity_key(self.config)
        except FeedKeyError as exc:
            log.error("cannot receive nginx activity log: %s", exc)
            return
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _ActivityLog(self, key), local_addr=(self.config.listen_host,
                                                        self.config.listen_port))
        except OSError as exc:
            log.error("cannot receive nginx activity log on udp %s: %s", self.config.listen, exc)

    def request_finished(self, v2_name: str) -> None:
        sup = self._v2_names.get(v2_name)
        if sup is not None:
            sup.last_activity = self._clock()

    async def _preload(self, sup: ModelSupervisor) -> None:
        with contextlib.suppress(StartError):
            await sup.ensure_ready()

    # -- capacity --------------------------------------------------------------------------

    def _holders(self, starting: ModelSupervisor, now: float) -> list[Holder]:
        out = []
        for sup in self.models.values():
            if sup is starting:
                continue
            if sup.state in (State.READY, State.STOPPING) or (
                sup.state is State.STARTING and sup.admitted
            ):
                out.append(Holder(
                    name=sup.spec.name, holds=sup.spec.requires, last_used=sup.last_activity,
                    busy=sup.busy(now), pinned=sup.spec.pinned,
                    evictable=sup.state is State.READY,
                ))
        return out

    async def _make_room(self, sup: ModelSupervisor) -> None:
        """Admit `sup` (called inside its start): stop other models until it fits."""
        deadline = self._clock() + sup.spec.startup_timeout
        async with self._admission:
            while True:
                now = self._clock()
                self._refresh_activity()
                holders = self._holders(sup, now)
                victims = choose_victims(sup.spec.requires, self.config.resources, holders)
                if victims.fits and not victims.names:
                    sup.admitted = True
                    return
                stops = [t for name in victims.names
                         if (t := self.models[name].try_stop("evicted")) is not None]
                if stops:
                    await asyncio.gather(*stops, return_exceptions=True)
                    continue
                settled = all(h.evictable for h in holders)  # nobody starting or stopping
                if now >= deadline or (not victims.fits and settled):
                    raise self._no_room(sup, victims.fits, holders)
                await asyncio.sleep(DRAIN_POLL)  # busy victims finish their requests first

    def _no_room(self, sup: ModelSupervisor, could_fit: bool, holders: list[Holder]) -> StartError:
        busy = ", ".join(h.name for h in holders if h.busy) or "none"
        if could_fit:
            return StartError(
                "capacity_timeout",
                f"model '{sup.spec.name}' needs {dict(sup.spec.requires)}; the models holding it "
                f"were still busy after {sup.spec.startup_timeout:g}s (busy: {busy})",
                retry_after=10,
            )
        held = ", ".join(f"{h.name} {dict(h.holds)}" for h in holders)
        return StartError(
            "no_capacity",
            f"model '{sup.spec.name}' needs {dict(sup.spec.requires)} of "
            f"{dict(self.config.resources)}; held by: {held or 'nobody'}",
            retry_after=10,
        )

    # -- activity and idleness ---------------------------------------------------------------

    def _refresh_activity(self) -> None:
        now = self._clock()
        ports = {sup.launcher.activity_port: sup for sup in self.models.values()
                 if sup.state is State.READY and sup.launcher.activity_port is not None}
        shared = self.config.inference.port if self._v2_names else None
        scan = scan_ports([*ports, *([shared] if shared is not None else [])])
        for port, sup in ports.items():
            act = scan[port]
            sup.observe(act.in_flight, act.last_close_ago, now)
        if shared is not None:
            # Conservative: a connection to the shared server may be any of its models'.
            # Their last activity comes from nginx's per-request log instead.
            busy = scan[shared].in_flight
            for sup in self._v2_names.values():
                sup.observe(busy, None, now)

    async def _watch_activity(self) -> None:
        while True:
            await asyncio.sleep(ACTIVITY_INTERVAL)
            try:
                self._refresh_activity()
                self._apply_pending()
                now = self._clock()
                for sup in self.models.values():
                    timeout = sup.spec.idle_timeout
                    if timeout > 0 and sup.state is State.READY and sup.idle_for(now) >= timeout:
                        sup.try_stop("idle")
            except Exception:
                log.exception("activity scan failed")

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
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(sup.close() for sup in self.models.values()))
        if self.inference_server is not None:
            await self.inference_server.close()
        if self._udp is not None:
            self._udp.close()
        if self._session is not None:
            await self._session.close()


class _ActivityLog(asyncio.DatagramProtocol):
    """Syslog lines from nginx: ``<190>... model_starter: KEY /v2/models/NAME/infer``."""

    def __init__(self, pool: ModelPool, key: str) -> None:
        self.pool = pool
        self.key = key

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        name = parse_activity_datagram(data, self.key)
        if name is not None:
            self.pool.request_finished(name)


def _keep_process_settings(new: Config, old: Config) -> Config:
    """Settings bound at daemon start stay as they are until a restart."""
    return dataclasses.replace(new, listen_host=old.listen_host, listen_port=old.listen_port,
                               inference=old.inference, log_dir=old.log_dir,
                               state_dir=old.state_dir)
