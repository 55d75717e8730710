"""A bounded channel from the engine thread to one asyncio consumer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class EventChannel(Generic[T]):
    """Single producer (the engine thread), single consumer (a coroutine on ``loop``).

    :meth:`put` never blocks the engine. The bound is cooperative: the engine checks
    :meth:`full` and pauses the producing sequence instead of putting more, so a slow consumer
    slows only its own generation.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None

    def full(self) -> bool:
        """Whether the consumer is ``capacity`` items behind (safe from any thread)."""
        return len(self._items) >= self._capacity

    def put(self, item: T) -> None:
        """Append ``item`` and wake the consumer (engine thread)."""
        with self._lock:
            self._items.append(item)
        # A closed loop means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T:
        """Wait for and return the next item (event loop)."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
            # _wake runs on this loop, after this coroutine suspends, so no wake-up is lost.
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
