"""What a model's supervisor remembers across starts: counters, the last error, recent
start durations (wait estimates) and failure times (crash-loop backoff). A reload that
replaces the supervisor carries a copy over."""

from __future__ import annotations

import collections
from typing import Any

from model_starter.config import CrashLoop
from model_starter.events import FailureReason, StopReason
from model_starter.launchers import StartError
from model_starter.policy import StartTimes, backoff_until

__all__ = ["History"]

FAILURE_TIMES = 64


class History:
    def __init__(self, crash_loop: CrashLoop, startup_timeout: float) -> None:
        self.crash_loop = crash_loop
        self.starts = 0
        self.failed_starts = 0
        self.crashes = 0
        self.last_error: StartError | None = None
        self.last_start_seconds: float | None = None
        self.stop_reason: StopReason | None = None
        # Before any start, a quarter of startup_timeout: the timeout bounds a start, a
        # typical one takes a fraction of it.
        self.start_times = StartTimes(default=startup_timeout / 4)
        self._failures: collections.deque[float] = collections.deque(maxlen=FAILURE_TIMES)

    def carry_over(self, old: History) -> None:
        """Take a copy of what `old` remembers (the crash-loop settings stay this one's)."""
        self.starts, self.failed_starts, self.crashes = old.starts, old.failed_starts, old.crashes
        self.last_error, self.stop_reason = old.last_error, old.stop_reason
        self._failures.extend(old._failures)
        self.start_times.copy_from(old.start_times)

    # -- what happened ----------------------------------------------------------------------

    def starting(self) -> None:
        self.starts += 1
        self.stop_reason = None

    def started(self, seconds: float) -> None:
        self.last_error = None
        self.last_start_seconds = seconds
        self.start_times.add(seconds)

    def failed(self, exc: StartError, now: float) -> None:
        self.failed_starts += 1
        self.last_error = exc
        if exc.reason.models_fault:
            self._failures.append(now)

    def crashed(self, exc: StartError, now: float) -> None:
        self.crashes += 1
        self.last_error = exc
        self.stop_reason = StopReason.CRASH
        self._failures.append(now)

    # -- what it predicts -------------------------------------------------------------------

    def failures_count(self) -> int:
        """Failures remembered for crash-loop protection (the model's own fault only)."""
        return len(self._failures)

    def backoff_until(self, now: float) -> float | None:
        """Monotonic time until which no start is tried (crash-loop protection)."""
        c = self.crash_loop
        return backoff_until(self._failures, now, c.max_failures, c.window, c.backoff)

    def crash_loop_error(self, name: str, now: float) -> StartError | None:
        """The refusal of a start while in backoff (None: a start may be tried)."""
        until = self.backoff_until(now)
        if until is None:
            return None
        c, err = self.crash_loop, self.last_error
        return StartError(
            FailureReason.CRASH_LOOP,
            f"model '{name}' failed {c.max_failures} times within {c.window:g}s; "
            f"no start for {until - now:.0f}s more (last: {err.detail if err else 'failures'})",
            log_tail=err.log_tail if err else [],
            exit_status=err.exit_status if err else None,
            retry_after=max(1, int(until - now + 0.999)),
        )

    def as_json(self, name: str, now: float) -> dict[str, Any]:
        backoff, err = self.backoff_until(now), self.last_error
        return {
            "starts": self.starts,
            "failed_starts": self.failed_starts,
            "crashes": self.crashes,
            "last_start_seconds": self.last_start_seconds,
            "expected_start_seconds": round(self.start_times.expected(), 3),
            "recent_start_seconds": [round(t, 3) for t in self.start_times.recent()],
            "stop_reason": None if self.stop_reason is None else str(self.stop_reason),
            "backoff_seconds": None if backoff is None else round(backoff - now, 3),
            "last_error": None if err is None else err.as_json(name),
        }
