"""Lifecycle policy as pure functions: who to evict, when to back off, how long a start takes."""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

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
    start_seconds: float = 0.0  # what bringing it back would cost (its expected start)
    sleep_holds: Mapping[str, float] | None = None  # what it holds asleep (None: cannot sleep)


@dataclass(frozen=True)
class Victims:
    """The models to stop (in order) so the new one fits; `fits` is False when none can.
    Those also in `sleep` are put to sleep instead of stopped."""

    names: tuple[str, ...]
    fits: bool
    busy: tuple[str, ...] = ()
    sleep: tuple[str, ...] = ()


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
    """Pick a minimal set of models to stop so `requires` fits.

    Minimal: no model in the set could be left running and the new one still fit.
    Among the minimal sets, the one with the fewest busy models, then the cheapest to
    bring back (the sum of their `start_seconds`), then the least recently used (the
    set whose most recently used member was used longest ago, and so on). The names
    come in stop order: idle before busy, least recently used first.

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
        key=_stop_order,
    )
    best: tuple[Holder, ...] | None = None
    for chosen in _minimal_sets(requires, free, candidates):
        if best is None or _set_rank(chosen) < _set_rank(best):
            best = chosen
    if best is None:
        return Victims((), False)
    ordered = sorted(best, key=_stop_order)
    return Victims(tuple(c.name for c in ordered), True, tuple(c.name for c in ordered if c.busy),
                   _sleepers(requires, capacity, holders, ordered))


def _sleepers(requires: Mapping[str, float], capacity: Mapping[str, float],
              holders: Sequence[Holder], victims: Sequence[Holder]) -> tuple[str, ...]:
    """The victims that may sleep instead of stopping: in stop order, each one that can sleep
    does when the new model still fits with it asleep (holding its `sleep_holds`), every
    resource within its capacity."""
    asleep: dict[str, Holder] = {}
    for v in victims:
        if v.sleep_holds is None:
            continue
        trial = {**asleep, v.name: replace(v, holds=v.sleep_holds)}
        stopped = {h.name for h in victims if h.name not in trial}
        free = free_capacity(capacity, [trial.get(h.name, h) for h in holders
                                        if h.name not in stopped])
        held_asleep = {res for h in trial.values() for res in h.holds}
        if fits(requires, free) and all(free.get(res, 0.0) >= -1e-9 for res in held_asleep):
            asleep = trial
    return tuple(v.name for v in victims if v.name in asleep)


# Above this many candidates the sets are not all tried: the greedy choice, pruned.
EXHAUSTIVE_LIMIT = 10


def _stop_order(h: Holder) -> tuple[bool, float, str]:
    return (h.busy, h.last_used, h.name)


def _set_rank(chosen: Sequence[Holder]) -> tuple[int, float, tuple[float, ...], tuple[str, ...]]:
    return (
        sum(h.busy for h in chosen),
        round(sum(h.start_seconds for h in chosen), 6),
        tuple(sorted((h.last_used for h in chosen), reverse=True)),
        tuple(sorted(h.name for h in chosen)),
    )


def _frees_enough(
    requires: Mapping[str, float], free: Mapping[str, float], chosen: Iterable[Holder]
) -> bool:
    after = dict(free)
    for h in chosen:
        for res, amount in h.holds.items():
            after[res] = after.get(res, 0.0) + amount
    return fits(requires, after)


def _is_minimal(
    requires: Mapping[str, float], free: Mapping[str, float], chosen: tuple[Holder, ...]
) -> bool:
    """Fits, and would not fit with any one member left running (fitting is monotone)."""
    return _frees_enough(requires, free, chosen) and not any(
        _frees_enough(requires, free, chosen[:i] + chosen[i + 1:]) for i in range(len(chosen))
    )


def _minimal_sets(
    requires: Mapping[str, float], free: Mapping[str, float], candidates: Sequence[Holder]
) -> Iterable[tuple[Holder, ...]]:
    if not _frees_enough(requires, free, candidates):
        return
    if len(candidates) <= EXHAUSTIVE_LIMIT:
        for size in range(1, len(candidates) + 1):
            for chosen in itertools.combinations(candidates, size):
                if _is_minimal(requires, free, chosen):
                    yield chosen
        return
    chosen_list: list[Holder] = []  # greedy in stop order, then drop what is not needed
    for h in candidates:
        chosen_list.append(h)
        if _frees_enough(requires, free, chosen_list):
            break
    for h in sorted(chosen_list, key=_stop_order, reverse=True):
        rest = [c for c in chosen_list if c is not h]
        if _frees_enough(requires, free, rest):
            chosen_list = rest
    yield tuple(chosen_list)


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
