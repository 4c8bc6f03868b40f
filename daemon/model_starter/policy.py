"""Lifecycle policy as pure functions: who to evict, when to back off, how long a start takes."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Holder",
    "StartTimes",
    "Victims",
    "backoff_until",
    "choose_victims",
    "fits",
    "free_capacity",
    "retry_after",
]


@dataclass(frozen=True)
class Holder:
    """A model that holds resources now (running or starting)."""

    name: str
    holds: Mapping[str, float]
    last_used: float  # monotonic time of its last activity
    busy: bool = False  # requests in flight, held, or just released for replay
    pinned: bool = False
    evictable: bool = True  # False while starting or stopping


@dataclass(frozen=True)
class Victims:
    """The models to stop (in order) so the new one fits; `fits` is False when none can."""

    names: tuple[str, ...]
    fits: bool
    busy: tuple[str, ...] = ()


def free_capacity(capacity: Mapping[str, float], holders: Iterable[Holder]) -> dict[str, float]:
    free = dict(capacity)
    for h in holders:
        for res, amount in h.holds.items():
            free[res] = free.get(res, 0.0) - amount
    return free


def fits(requires: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(free.get(res, 0.0) >= amount - 1e-9 for res, amount in requires.items())


def choose_victims(
    requires: Mapping[str, float],
    capacity: Mapping[str, float],
    holders: Sequence[Holder],
) -> Victims:
    """Pick models to stop so `requires` fits: idle before busy, least recently used first.

    Pinned and non-evictable holders are never chosen; a holder that frees nothing the
    new model needs is never chosen. If even every candidate would not make room, the
    answer is `fits=False` and nobody is stopped.
    """
    free = free_capacity(capacity, holders)
    if fits(requires, free):
        return Victims((), True)
    short = {res for res, amount in requires.items() if free.get(res, 0.0) < amount - 1e-9}
    candidates = sorted(
        (h for h in holders if h.evictable and not h.pinned and short & set(h.holds)),
        key=lambda h: (h.busy, h.last_used, h.name),
    )
    chosen: list[Holder] = []
    for h in candidates:
        chosen.append(h)
        for res, amount in h.holds.items():
            free[res] = free.get(res, 0.0) + amount
        if fits(requires, free):
            return Victims(
                tuple(c.name for c in chosen), True, tuple(c.name for c in chosen if c.busy)
            )
    return Victims((), False)


def backoff_until(
    failures: Sequence[float], now: float, max_failures: int, window: float, backoff: float
) -> float | None:
    """When `max_failures` failures fall within `window` seconds, no start until the last
    one plus `backoff`; None when a start may be tried now."""
    if max_failures <= 0 or not failures:
        return None
    recent = [t for t in failures if now - t <= window]
    if len(recent) < max_failures:
        return None
    until = max(recent) + backoff
    return until if until > now else None


class StartTimes:
    """The durations of a model's recent successful starts, and what they predict.

    `expected()` is the p90 of the last `keep` starts; before any start it is
    `default` (the supervisor passes a quarter of the model's startup_timeout: the
    timeout bounds a start, a typical one takes a fraction of it).
    """

    def __init__(self, default: float, keep: int = 20, percentile: float = 0.9) -> None:
        self.default = default
        self.percentile = percentile
        self._recent: collections.deque[float] = collections.deque(maxlen=keep)

    def add(self, seconds: float) -> None:
        self._recent.append(seconds)

    def recent(self) -> list[float]:
        return list(self._recent)

    def copy_from(self, other: StartTimes) -> None:
        self._recent.extend(other._recent)

    def expected(self) -> float:
        if not self._recent:
            return self.default
        ordered = sorted(self._recent)
        return ordered[max(0, math.ceil(self.percentile * len(ordered)) - 1)]


def retry_after(expected_remaining: float, ceiling: int) -> int:
    """Seconds a client should wait before trying again: the expected rest of a start,
    at least 1, never more than `ceiling` (the constant used before estimates existed)."""
    return max(1, min(ceiling, math.ceil(expected_remaining)))
