"""How much a model is used right now: requests held in the daemon, requests at the model
(as the activity monitor saw them), its last activity, and the grace during which
released requests count as busy until their replays reach the model."""

from __future__ import annotations

from typing import Any

__all__ = ["HeldTotal", "Usage"]


class Usage:
    def __init__(self, now: float, release_grace: float, total: HeldTotal) -> None:
        self.held = 0  # requests waiting in the daemon for this model
        self.total = total  # ... and for every model
        self.in_flight = 0  # requests at the model, as the kernel last showed
        self.last_activity = now  # monotonic
        self.release_grace = release_grace
        self._released_until = 0.0

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
