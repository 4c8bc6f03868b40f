"""What the daemon reports: the closed vocabularies (states, stop and failure reasons) and
the events, as frozen slotted dataclasses, plus the hub that fans them out to SSE readers.

Each event has a `kind` (the SSE event name) and `as_json()`, the JSON the admin API has
always sent: ``{"event": kind, "model": ..., "time": ..., <fields>}``. Daemon-wide events
(`Reloaded`, `Shutdown`) carry ``"model": ""``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

__all__ = [
    "TRANSITIONS",
    "Adopted",
    "Event",
    "EventHub",
    "FailureReason",
    "HookFailed",
    "InvalidTransition",
    "KvRestored",
    "KvSaved",
    "Listener",
    "Reloaded",
    "Shutdown",
    "StartFailed",
    "Started",
    "State",
    "StateChanged",
    "Status",
    "StopReason",
    "Stopped",
    "TooManySubscribers",
    "check_transition",
]

QUEUE_SIZE = 1000


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    SLEEPING = "sleeping"  # the process runs with its accelerator memory freed (see sleeping.py)
    WAKING = "waking"


# Every state change a model may make (llama-swap's isValidTransition); anything else is a
# bug in the caller and raises InvalidTransition.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.READY}),  # READY: adopted
    State.FAILED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.READY, State.FAILED}),
    State.READY: frozenset({State.STOPPING, State.STOPPED, State.SLEEPING}),  # STOPPED: crashed
    State.STOPPING: frozenset({State.STOPPED, State.READY}),  # READY: an idle stop called off
    # STOPPING: idle, evicted or a failed sleep; STOPPED: crashed while asleep
    State.SLEEPING: frozenset({State.WAKING, State.STOPPING, State.STOPPED}),
    State.WAKING: frozenset({State.READY, State.FAILED}),
}


class InvalidTransition(RuntimeError):
    """A state change the table does not allow."""


def check_transition(model: str, old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"model '{model}': {old} -> {new} is not a valid transition")


class StopReason(enum.StrEnum):
    """Why a model stopped (the `reason` of a `stopped` event, the status' `stop_reason`)."""

    IDLE = "idle"
    EVICTED = "evicted"
    CRASH = "crash"
    MANUAL = "manual"
    SHUTDOWN = "shutdown"
    RELOAD = "reload"
    REMOVED = "removed"


class FailureReason(enum.StrEnum):
    """Why a start failed or a request could not be served (the `error` of a 503)."""

    # decided by the supervisor
    QUEUE_FULL = "queue_full"
    TIMEOUT = "timeout"
    SHUTTING_DOWN = "shutting_down"
    CRASH_LOOP = "crash_loop"
    STARTUP_TIMEOUT = "startup_timeout"
    EXITED = "exited"
    STOPPED = "stopped"
    INTERNAL_ERROR = "internal_error"
    CRASHED = "crashed"
    WAKE_FAILED = "wake_failed"
    # decided by admission
    NO_CAPACITY = "no_capacity"
    CAPACITY_TIMEOUT = "capacity_timeout"
    # decided by a launcher
    PORT_IN_USE = "port_in_use"
    SPAWN_FAILED = "spawn_failed"
    START_TIMEOUT = "start_timeout"
    STOP_TIMEOUT = "stop_timeout"
    STATUS_TIMEOUT = "status_timeout"
    START_COMMAND_FAILED = "start_command_failed"
    INFERENCE_SERVER_DOWN = "inference_server_down"
    LOAD_FAILED = "load_failed"

    @property
    def models_fault(self) -> bool:
        """Counts towards a crash loop (the others say nothing about the model itself)."""
        return self not in _NOT_THE_MODELS_FAULT


_NOT_THE_MODELS_FAULT = frozenset({
    FailureReason.PORT_IN_USE, FailureReason.STOPPED, FailureReason.SHUTTING_DOWN,
    FailureReason.NO_CAPACITY, FailureReason.CAPACITY_TIMEOUT,
})


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    kind: ClassVar[str]
    model: str
    time: float = dataclasses.field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(_Event):
    kind: ClassVar[str] = "state"
    old: State
    new: State


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Started(_Event):
    kind: ClassVar[str] = "started"
    seconds: float
    pid: int | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StartFailed(_Event):
    kind: ClassVar[str] = "start_failed"
    reason: FailureReason
    detail: str
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Stopped(_Event):
    kind: ClassVar[str] = "stopped"
    reason: StopReason
    exit_status: int | None = None  # reported for a crash only

    def as_json(self) -> dict[str, Any]:
        out = {"event": self.kind, "model": self.model, "time": self.time,
               "reason": str(self.reason)}
        if self.reason is StopReason.CRASH:
            out["exit_status"] = self.exit_status
        return out


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Adopted(_Event):
    kind: ClassVar[str] = "adopted"
    pid: int | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Status(_Event):
    """Where a model stands (the first events of an SSE stream)."""

    kind: ClassVar[str] = "status"
    state: State


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Reloaded(_Event):
    kind: ClassVar[str] = "reloaded"
    model: str = ""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown(_Event):
    kind: ClassVar[str] = "shutdown"
    model: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _KvReport(_Event):
    """A KV-cache save or restore (see kvcache.py): its files and what it removed."""

    ok: bool
    detail: str
    key: str | None
    files: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KvSaved(_KvReport):
    kind: ClassVar[str] = "kv_save"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KvRestored(_KvReport):
    kind: ClassVar[str] = "kv_restore"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HookFailed(_Event):
    """A lifecycle hook action that failed (the start or stop went on)."""

    kind: ClassVar[str] = "hook_failed"
    phase: str
    action: str
    detail: str
    seconds: float


Event = (StateChanged | Started | StartFailed | Stopped | Adopted | Status | Reloaded | Shutdown
         | KvSaved | KvRestored | HookFailed)
Listener = Callable[[Event], None]


class TooManySubscribers(Exception):
    """`EventHub.subscribe` found as many subscribers as allowed."""


class EventHub:
    """Fan-out of events to SSE subscribers, as many as the caller allows."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._bounded = 0  # how many of them were made with a limit

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():  # a slow reader loses its oldest events, never blocks the daemon
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def subscribe(
        self, limit: int | None = None
    ) -> contextlib.AbstractContextManager[asyncio.Queue[Event]]:
        """A queue of the events from now on. With `limit`, one of the bounded subscriptions
        (the admin API's event streams): TooManySubscribers, at once, when `limit` of them
        are open. None: the caller bounds its own (log follows)."""
        if limit is not None and self._bounded >= limit:
            raise TooManySubscribers(f"{limit} event streams are open already")
        return self._subscription(bounded=limit is not None)

    @contextlib.contextmanager
    def _subscription(self, bounded: bool) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        self._bounded += bounded
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
            self._bounded -= bounded
