"""Fan-out of state-change events to SSE subscribers, as many as the caller allows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from model_starter.supervisor import Event

__all__ = ["EventHub", "TooManySubscribers"]

QUEUE_SIZE = 1000


class TooManySubscribers(Exception):
    """`subscribe` found as many subscribers as allowed."""


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():  # a slow reader loses its oldest events, never blocks the daemon
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, limit: int) -> contextlib.AbstractContextManager[asyncio.Queue[Event]]:
        """A queue of the events from now on; TooManySubscribers, at once, when `limit` are
        taken."""
        if len(self._subscribers) >= limit:
            raise TooManySubscribers(f"{limit} event streams are open already")
        return self._subscription()

    @contextlib.contextmanager
    def _subscription(self) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
