"""How much a model is used right now: requests held in the daemon, requests at the model
(as the activity monitor saw them), its last activity, and the requests released for
replay that have not reached the model yet.

Released requests are protected exactly until their replays arrived. nginx replays them
from an address nothing else connects from (``routing.replay_source``); at the release
the supervisor notes the connections from it the model's port has then (`baseline`);
every scan after counts the ones not in it — in flight, or already ended and in
TIME_WAIT; a pair that was in TIME_WAIT then and is in flight now, or closed again later,
carries a new one (the kernel reuses such pairs on loopback) — and once they are as many
as the requests released, the model is no longer busy on their account. `release_grace`
is only the upper bound: for replays that never show (a client that went away), and the
whole protection where there is no such address (auth_request mode, a model nginx reaches
on a name, IPv6 or another host).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from model_starter.activity import Peer, Seen

# A pair's close at least this much later than the one the baseline saw is a new connection
# on it (the kernel reuses a TIME_WAIT pair only once it is a second old).
REUSED_AFTER = 0.5

__all__ = ["HeldTotal", "Usage"]


class Usage:
    def __init__(self, now: float, release_grace: float, total: HeldTotal) -> None:
        self.held = 0  # requests waiting in the daemon for this model
        self.total = total  # ... and for every model
        self.held_replays = 0  # those of them that go to the model once released (nginx's)
        self.in_flight = 0  # requests at the model, as the kernel last showed
        self.last_activity = now  # monotonic
        self.release_grace = release_grace
        self._released_until = 0.0
        self.replays_pending = 0  # requests released whose replays were not seen yet
        self._baseline: dict[Peer, float | None] | None = None  # closed at, None: in flight

    def refusal(self, model: str, max_waiting: int) -> str | None:
        """Why one more request for `model` cannot be held (None: it can)."""
        if self.held >= max_waiting:
            return (f"{self.held} requests already wait for model '{model}' "
                    f"(max_waiting {max_waiting})")
        return self.total.refusal()

    def hold(self, change: int) -> None:
        self.held += change
        self.total.count += change

    def busy(self, now: float) -> bool:
        """Requests in flight, held here, or released but maybe not yet replayed."""
        return self.held > 0 or self.in_flight > 0 or now < self._released_until

    def idle_for(self, now: float) -> float:
        return 0.0 if self.busy(now) else now - self.last_activity

    def observe(self, in_flight: int, last_close_ago: float | None, now: float,
                peers: Mapping[Peer, float | None] | None = None) -> None:
        """What the activity monitor saw at the model's port (`peers`: its connections)."""
        self.in_flight = in_flight
        if (self.replays_pending and peers is not None
                and self._arrived(peers, now) >= self.replays_pending):
            self.replays_pending = 0  # every replay reached the model
            self._released_until = 0.0
        if in_flight > 0:
            self.last_activity = now
        elif last_close_ago is not None:
            self.last_activity = max(self.last_activity, now - last_close_ago)

    def _arrived(self, peers: Mapping[Peer, float | None], now: float) -> int:
        """The connections in `peers` that the baseline did not have."""
        base = self._baseline
        if base is None:
            return 0
        new = 0
        for peer, age in peers.items():
            if peer not in base:
                new += 1
            elif (closed := base[peer]) is not None and (
                    age is None or now - age > closed + REUSED_AFTER):
                new += 1  # a new connection on a pair that was in TIME_WAIT
        return new

    def released(self, now: float, replays: int, baseline: Seen | None) -> None:
        """The model became ready: `replays` held requests go now; they count as busy until
        as many new replay connections (not in `baseline`) were seen, at most
        `release_grace` (`baseline` None: no replay address, the bound alone)."""
        self.last_activity = now
        self.replays_pending = replays
        self._baseline = None if baseline is None else {
            p: None if age is None else now - age for p, age in baseline.items()}
        self._released_until = now + self.release_grace if replays else 0.0

    def replay_coming(self, now: float, baseline: Callable[[], Seen | None]) -> None:
        """One more request goes to the ready model as a replay (its 502 raced the start):
        counted with the replays still awaited, else protected on its own."""
        self.last_activity = now
        if self.replays_pending and now < self._released_until:
            self.replays_pending += 1
            self._released_until = now + self.release_grace
        else:
            self.released(now, 1, baseline())

    def as_json(self, now: float, wall: float, ready: bool) -> dict[str, Any]:
        return {
            "held": self.held,
            "in_flight": self.in_flight,
            "busy": self.busy(now),
            "replays_pending": self.replays_pending if now < self._released_until else 0,
            "idle_seconds": round(self.idle_for(now), 3) if ready else None,
            "last_activity": wall - (now - self.last_activity),
        }


class HeldTotal:
    """Requests held across all models, against the config's `max_held` (one per pool)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def refusal(self) -> str | None:
        """Why one more request cannot be held (None: it can)."""
        if self.count < self.limit:
            return None
        return f"{self.count} requests already wait across all models (max_held {self.limit})"
