"""Admission under capacity: a start may begin once its model's resources are free.

Starts are admitted one at a time (a lock): admission picks a minimal set of victims with
the pure `policy.choose_victims` (idle before busy, then cheapest to bring back by each
model's expected start — its measured starts, before any a quarter of its startup_timeout —
then least recently used), then asks each victim's owner to stop, or to sleep when the policy
says its sleep frees enough (see sleeping.py); an owner that became busy in the meantime
refuses, and admission looks again. Busy victims are waited for (their in-flight requests
finish) up to the starting model's `max_wait` (at most its startup_timeout); a model within
its `min_dwell` keeps its turn (see `turns`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from model_starter.events import FailureReason, State, StopReason
from model_starter.launchers import StartError
from model_starter.policy import Holder, choose_victims
from model_starter.supervisor import ModelSupervisor
from model_starter.turns import dwelling, turn_due, turn_retry_after, wait_limit

__all__ = ["Admission"]

# How often a start that waits for busy victims looks again (a kernel scan, ~1 ms): the
# wait ends at most this long after the victim's last request or replay was seen.
DRAIN_POLL = 0.01


class Admission:
    def __init__(
        self,
        models: Callable[[], Mapping[str, ModelSupervisor]],
        capacity: Callable[[], Mapping[str, float]],
        refresh_activity: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        drain_poll: float = DRAIN_POLL,
    ) -> None:
        self._models = models
        self._capacity = capacity
        self._refresh_activity = refresh_activity
        self._clock = clock
        self._drain_poll = drain_poll
        self._lock = asyncio.Lock()
        # The models whose turn is over (a waiting start's turn is due and needs their room):
        # in auth_request mode their new requests wait (`wait_turn`), so they drain.
        self._turn_over: frozenset[str] = frozenset()

    def holders(self, starting: ModelSupervisor, now: float, waited: float = 0.0) -> list[Holder]:
        """Every other model that holds resources now (running, asleep, stopping, admitted); one
        within its `min_dwell` is not evictable yet (`starting` waited `waited` s so far)."""
        due = turn_due(waited, starting.spec.max_wait)
        wall = time.time()
        out = []
        for sup in self._models().values():
            holds = sup.holds()
            if sup is not starting and holds is not None:
                out.append(Holder(
                    name=sup.spec.name, holds=holds, last_used=sup.usage.last_activity,
                    busy=sup.busy(now), pinned=sup.spec.pinned,
                    evictable=sup.evictable and not dwelling(
                        wall - sup.since, sup.usage.idle_for(now), sup.spec.min_dwell, due),
                    start_seconds=sup.expected_start_seconds(), sleep_holds=sup.sleep_holds(),
                ))
        return out

    async def make_room(self, sup: ModelSupervisor) -> None:
        """Admit `sup` (called inside its start): stop other models until it fits."""
        began = self._clock()  # its first held request arrived (the start began with it)
        limit = wait_limit(sup.spec.max_wait, sup.spec.startup_timeout)
        deadline = began + limit
        try:  # starts take turns in the order they began (the lock is first come first served)
            async with asyncio.timeout(limit):
                await self._lock.acquire()
        except TimeoutError:
            raise self._no_room(sup, True, self.holders(sup, self._clock()), limit) from None
        try:
            while True:
                now = self._clock()
                self._refresh_activity()
                holders = self.holders(sup, now, now - began)
                victims = choose_victims(sup.spec.requires, self._capacity(), holders)
                due = turn_due(now - began, sup.spec.max_wait)
                self._turn_over = frozenset(victims.names) if due else frozenset()
                if victims.fits and not victims.names:
                    sup.admit()
                    return
                models = self._models()
                stops = [t for name in victims.names if (t := (
                    models[name].try_sleep if name in victims.sleep else models[name].try_stop
                )(StopReason.EVICTED)) is not None]
                if stops:
                    await asyncio.gather(*stops, return_exceptions=True)
                    continue
                settled = all(h.evictable for h in holders)  # nobody starting or stopping
                if now >= deadline or (not victims.fits and settled):
                    raise self._no_room(sup, victims.fits or not settled, holders, limit)
                await asyncio.sleep(self._drain_poll)  # busy victims finish their requests
        finally:
            self._turn_over = frozenset()
            self._lock.release()

    async def wait_turn(self, sup: ModelSupervisor) -> None:
        """A request for a running model whose turn is over waits until the model was
        stopped (then it starts again in its own turn) or the turn ends otherwise. Only
        requests the daemon sees can wait: auth_request mode's, not error_page mode's."""
        while sup.spec.name in self._turn_over and sup.state is State.READY:
            await asyncio.sleep(self._drain_poll)

    def _no_room(self, sup: ModelSupervisor, could_fit: bool, holders: list[Holder],
                 limit: float) -> StartError:
        busy = ", ".join(h.name for h in holders if h.busy) or "none"
        if could_fit:
            return StartError(
                FailureReason.CAPACITY_TIMEOUT,
                f"model '{sup.spec.name}' needs {dict(sup.spec.requires)}; it got no turn within "
                f"{limit:g}s (max_wait {sup.spec.max_wait:g}, startup_timeout "
                f"{sup.spec.startup_timeout:g}; busy: {busy})",
                retry_after=turn_retry_after(limit),
            )
        held = ", ".join(f"{h.name} {dict(h.holds)}" for h in holders)
        return StartError(
            FailureReason.NO_CAPACITY,
            f"model '{sup.spec.name}' needs {dict(sup.spec.requires)} of "
            f"{dict(self._capacity())}; held by: {held or 'nobody'}",
            retry_after=10,
        )
