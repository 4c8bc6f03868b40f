"""The activity monitor: what the models are doing, and idle stops.

Two sources: the kernel's view of each model's port (`activity.scan_ports`, every
ACTIVITY_INTERVAL), and for V2 models, whose server port is shared, nginx's activity
feed (one syslog line over UDP per finished request, parsed by
`protocol.parse_activity_datagram`). After each scan it runs the caller's `after_scan`
(the reloader swaps in changed specs), then asks idle models to sleep (`sleep.after`) or
to stop (`idle_timeout`, also when asleep). A request seen at the port of a sleeping engine
that wakes itself (llama.cpp) wakes the model in the daemon's books too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from model_starter.activity import PortActivity, scan_ports
from model_starter.events import State, StopReason
from model_starter.protocol import parse_activity_datagram, v2_source_address
from model_starter.supervisor import ModelSupervisor

__all__ = ["ActivityMonitor"]

log = logging.getLogger("model_starter.monitor")

ACTIVITY_INTERVAL = 0.5
HOUSEKEEPING_INTERVAL = 5.0

Models = Callable[[], Mapping[str, ModelSupervisor]]


class ActivityMonitor:
    def __init__(
        self,
        models: Models,
        shared: Models,
        shared_port: Callable[[], int | None],
        after_scan: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        own_calls: Callable[[], int] = lambda: 0,
        per_model: Callable[[], bool] = lambda: False,
    ) -> None:
        """`models`: every model by name; `shared`: the models on the shared inference
        server by their name there; `shared_port`: that server's port (None: no such models);
        `own_calls`: the daemon's own calls to that server under way (not the models' use);
        `per_model`: the server is local, each V2 model's requests have their own source."""
        self._models = models
        self._shared = shared
        self._shared_port = shared_port
        self._after_scan = after_scan
        self._clock = clock
        self._own_calls = own_calls
        self._per_model = per_model
        self._udp: asyncio.DatagramTransport | None = None

    def refresh(self) -> None:
        """Scan the kernel once and tell each running model what it shows."""
        now = self._clock()
        ports = {sup.launcher.activity_port: sup for sup in self._models().values()
                 if sup.launcher.activity_port is not None and (
                     sup.state in (State.READY, State.STOPPING)  # STOPPING: see _called_off
                     or _self_waking_asleep(sup))}
        shared = self._shared_port()
        scan = scan_ports([*ports, *([shared] if shared is not None else [])])
        for port, sup in ports.items():
            act = scan[port]
            src = sup.replay_source
            sup.observe(act.in_flight, act.last_close_ago, now,
                        None if src is None else act.source(src).peers)
            if sup.request_since_asleep(act.in_flight, act.last_close_ago, now):
                sup.engine_woke()
        if shared is not None:
            self._observe_shared(scan[shared], now)

    def _observe_shared(self, act: PortActivity, now: float) -> None:
        """On a local server each V2 model's requests come from its own loopback address
        (nginx's proxy_bind): counted per model, the daemon's own calls (from 127.0.0.1)
        never. On a remote one, conservatively: any connection but the daemon's own calls
        may be any model's; their last activity then comes from nginx's per-request log."""
        if self._per_model():
            for name, sup in self._shared().items():
                mine = act.source(v2_source_address(name))
                src = sup.replay_source
                replays = act.source(src) if src is not None else PortActivity()
                closes = [a for a in (mine.last_close_ago, replays.last_close_ago) if a is not None]
                sup.observe(mine.in_flight + replays.in_flight, min(closes, default=None), now,
                            None if src is None else replays.peers)
            return
        busy = max(0, act.in_flight - self._own_calls())
        for sup in self._shared().values():
            sup.observe(busy, None, now)

    def stop_idle(self) -> None:
        now = self._clock()
        for sup in self._models().values():
            timeout, sleeps = sup.spec.idle_timeout, sup.spec.sleeps
            if sup.state not in (State.READY, State.SLEEPING):
                continue
            idle = sup.usage.idle_for(now)
            if timeout > 0 and idle >= timeout:
                sup.try_stop(StopReason.IDLE)
            elif sleeps is not None and sup.state is State.READY and idle >= sleeps.after:
                sup.try_sleep(StopReason.IDLE)

    async def watch(self, interval: float = ACTIVITY_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.refresh()
                self._after_scan()
                self.stop_idle()
            except Exception:
                log.exception("activity scan failed")

    async def housekeep(self, interval: float = HOUSEKEEPING_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            for sup in self._models().values():
                try:
                    sup.launcher.maintain()
                except Exception:
                    log.exception("model=%s housekeeping failed", sup.spec.name)

    # -- nginx's activity feed -------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._udp is not None

    async def listen(self, host: str, port: int, key: str) -> None:
        """nginx logs each finished V2 request here (syslog over UDP, on the daemon's own
        address): a shared server port cannot tell which model a connection is for. Only
        lines that carry `key` (see ``feedkey``) count."""
        loop = asyncio.get_running_loop()
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _ActivityFeed(self.request_finished, key), local_addr=(host, port))
        except OSError as exc:
            log.error("cannot receive nginx activity log on udp %s:%s: %s", host, port, exc)

    def request_finished(self, name: str) -> None:
        sup = self._shared().get(name)
        if sup is not None:
            sup.touch(self._clock())

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None


class _ActivityFeed(asyncio.DatagramProtocol):
    """Syslog lines from nginx: ``<190>... model_starter: KEY /v2/models/NAME/infer``."""

    def __init__(self, finished: Callable[[str], None], key: str) -> None:
        self._finished = finished
        self._key = key

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        name = parse_activity_datagram(data, self._key)
        if name is not None:
            self._finished(name)


def _self_waking_asleep(sup: ModelSupervisor) -> bool:
    sleeps = sup.spec.sleeps
    return sup.state is State.SLEEPING and sleeps is not None and sleeps.self_waking
