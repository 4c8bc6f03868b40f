"""Fair turns between models that cannot run together, as pure functions (admission asks).

A start that needs room waits for its turn: the models holding the room are stopped at
their first moment with nothing in flight, held or awaited (a busy model is never cut).
Starts wait in the order their oldest held request arrived (admission admits one start at
a time, first come first served). Two per-model keys shape the turns:

* ``max_wait`` (of the waiting model): its start waits at most this long for room (never
  longer than its ``startup_timeout``, the bound without the rule); then its held requests
  get 503 ``capacity_timeout`` with a ``Retry-After``. From half of it on, its turn is *due*.
* ``min_dwell`` (of a running model): for this many seconds after it became ready it is not
  evicted at a mere pause between requests; only once it has been idle for `DWELL_IDLE`
  seconds, or once the waiting model's turn is due. This keeps a model that was just paid
  for (its start) serving its burst instead of swapping at the first gap.

``0`` turns either rule off: ``max_wait: 0`` waits up to ``startup_timeout`` (the old rule)
and never makes a turn due; ``min_dwell: 0`` lets every pause end a turn.
"""

from __future__ import annotations

from model_starter.policy import retry_after

__all__ = ["DWELL_IDLE", "dwelling", "turn_due", "turn_retry_after", "wait_limit"]

# Within its min_dwell a model counts as idle (evictable) after this long with nothing in flight.
DWELL_IDLE = 1.0


def wait_limit(max_wait: float, startup_timeout: float) -> float:
    """How long a start may wait for room: `max_wait`, at most `startup_timeout` (0: the latter)."""
    return min(max_wait, startup_timeout) if max_wait > 0 else startup_timeout


def turn_due(waited: float, max_wait: float) -> bool:
    """The waiting start's turn is due: it waited half its `max_wait` (never, when 0)."""
    return max_wait > 0 and waited >= max_wait / 2


def dwelling(ready_for: float, idle_for: float, min_dwell: float, due: bool) -> bool:
    """A running model keeps its turn against a waiting start (is not evicted now): it became
    ready less than `min_dwell` seconds ago, was used within `DWELL_IDLE` seconds (a busy
    model has `idle_for` 0), and the waiting start's turn is not `due`."""
    return min_dwell > 0 and ready_for < min_dwell and idle_for < DWELL_IDLE and not due


def turn_retry_after(limit: float) -> int:
    """Retry-After of a start that got no turn within `limit` s: half of it, 1..10 s."""
    return retry_after(limit / 2, 10)
