"""How much a model is used right now: requests held in the daemon, requests at the model
(as the activity monitor saw them), its last activity, and the grace during which
released requests count as busy until their replays reach the model."""

from __future__ import annotations

from typing import Any

__all__ = ["Usage"]


class Usage:
    def __init__(self, now: float, release_grace: float) -> None:
        self.held = 0  # requests waiting in the daemon for this model
        self.in_flight = 0  # requests at the model, as the kernel last showed
        self.last_activity = now  # monotonic
        self.release_grace = release_grace
        self._released_until = 0.0

    def busy(self, now: float) -> bool:
        """Requests in flight, held here, or released but maybe not yet replayed."""
        return self.held > 0 or self.in_flight > 0 or now < self._released_until

    def idle_for(self, now: float) -> float:
        return 0.0 if self.busy(now) else now - self.last_activity

    def observe(self, in_flight: int, last_close_ago: float | None, now: float) -> None:
        """What the activity monitor saw at the model's port."""
        self.in_flight = in_flight
        if in_flight > 0:
            self.last_activity = now
        elif last_close_ago is not None:
            self.last_activity = max(self.last_activity, now - last_close_ago)

    def released(self, now: float, grace: bool = True) -> None:
        """The model became ready: held requests go now; their replays are in flight until
        they connect (no grace for an adopted model: nobody was held)."""
        self.last_activity = now
        self._released_until = now + self.release_grace if grace else 0.0

    def as_json(self, now: float, wall: float, ready: bool) -> dict[str, Any]:
        return {
            "held": self.held,
            "in_flight": self.in_flight,
            "busy": self.busy(now),
            "idle_seconds": round(self.idle_for(now), 3) if ready else None,
            "last_activity": wall - (now - self.last_activity),
        }
