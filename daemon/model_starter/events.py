"""Fan-out of state-change events to any number of SSE subscribers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from model_starter.supervisor import Event

__all__ = ["EventHub"]

QUEUE_SIZE = 1000


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():  # a slow reader loses its oldest events, never blocks the daemon
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
