"""Sharing the worker between clients (sans-I/O): who goes next, who gets the 503.

A client is an API key, or a peer address when keys are off. Fair share is about contention,
not a quota: a client alone may fill every slot and the whole queue (one local orchestrator
sending everything from 127.0.0.1). When several want the worker at once:

- the next request to start is the oldest of the client running the fewest right now
  (:class:`FairQueue`), so one client's backlog never starves another's first request;
- when every place (slots + queue) is taken, a newcomer gets one from the client holding the
  most, whose newest waiting request is refused instead (:class:`Shares`): the 503 goes to
  the client over its share, not to whoever arrives next.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from gemma_worker.core.errors import ErrorCode, WorkerError

T = TypeVar("T")


def at_capacity(*, largest_share: bool = False) -> WorkerError:
    """The 503 of a full worker: for a newcomer, or (``largest_share``) for the waiting
    request that made room for another client's."""
    why = " and this client holds the largest share of it" if largest_share else ""
    return WorkerError(
        ErrorCode.OVERLOADED, f"the worker is at capacity{why}; retry later", retry_after=1
    )


class FairQueue(Generic[T]):
    """A wait list ordered by fair share (module docstring); ``client_of(item)`` says whose an
    item is. Unbounded: :class:`Shares` alone bounds the places, before anything is queued."""

    def __init__(self, client_of: Callable[[T], str]) -> None:
        self._client_of = client_of
        self._by_client: dict[str, deque[tuple[int, T]]] = {}
        self._arrival = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[T]:
        """Every waiting item, in arrival order."""
        entries = sorted(e for q in self._by_client.values() for e in q)
        return iter(item for _, item in entries)

    def push(self, item: T) -> None:
        """Add ``item`` behind its client's earlier ones."""
        self._by_client.setdefault(self._client_of(item), deque()).append(
            (next(self._arrival), item)
        )
        self._size += 1

    def _best(self, running: Mapping[str, int]) -> str | None:
        """The client whose oldest item goes next: fewest running, then longest waiting."""
        if not self._by_client:
            return None
        return min(self._by_client, key=lambda c: (running.get(c, 0), self._by_client[c][0][0]))

    def peek(self, running: Mapping[str, int]) -> T | None:
        """The item that starts next, given how many each client has ``running``."""
        client = self._best(running)
        return None if client is None else self._by_client[client][0][1]

    def ordered(self, running: Mapping[str, int]) -> list[T]:
        """Every waiting item in the order they would start if nothing else changed (for
        queue positions): O(n log clients)."""
        lists = {c: list(q) for c, q in self._by_client.items()}
        heap = [(running.get(c, 0), entries[0][0], c, 0) for c, entries in lists.items()]
        heapq.heapify(heap)
        out: list[T] = []
        while heap:
            count, _, client, i = heapq.heappop(heap)
            entries = lists[client]
            out.append(entries[i][1])
            if i + 1 < len(entries):
                heapq.heappush(heap, (count + 1, entries[i + 1][0], client, i + 1))
        return out

    def remove(self, item: T) -> bool:
        """Drop ``item`` if it is waiting; return whether it was."""
        client = self._client_of(item)
        entries = self._by_client.get(client)
        if not entries:
            return False
        for entry in entries:
            if entry[1] is item:
                entries.remove(entry)
                break
        else:
            return False
        if not entries:
            del self._by_client[client]
        self._size -= 1
        return True

    def newest_of(self, client: str) -> T | None:
        """``client``'s most recent waiting item (the one given up when it must make room)."""
        entries = self._by_client.get(client)
        return entries[-1][1] if entries else None


class Shares:
    """The worker's places (running, queued or being prepared: ``capacity`` in all) and who
    holds them; at most ``per_client`` each when set."""

    def __init__(self, capacity: int, per_client: int | None = None) -> None:
        self.capacity = capacity
        self.per_client = per_client
        self._held: Counter[str] = Counter()
        self._total = 0

    def held(self, client: str) -> int:
        """How many places ``client`` holds."""
        return self._held[client]

    @property
    def total(self) -> int:
        """Places held in all."""
        return self._total

    def take(self, client: str) -> str | None:
        """Give ``client`` a place. When all are taken and another client holds more, that
        client is returned: its newest waiting request must give its place up (the caller
        refuses it). ``OVERLOADED`` when ``client`` is itself the one over its share, or at
        its own cap."""
        held = self._held[client]
        if self.per_client is not None and held >= self.per_client:
            raise WorkerError(
                ErrorCode.OVERLOADED,
                f"this client already has {held} requests running or waiting; the limit is "
                f"{self.per_client}",
                retry_after=1,
            )
        evict: str | None = None
        if self._total >= self.capacity:
            heaviest, most = max(self._held.items(), key=lambda kv: kv[1])
            if most <= held + 1:  # nobody holds more than this client would
                raise at_capacity()
            evict = heaviest
        self._held[client] += 1
        self._total += 1
        return evict

    def give_back(self, client: str) -> None:
        """``client``'s request has ended: its place is free."""
        if self._held[client] > 0:
            self._held[client] -= 1
            self._total -= 1
            if not self._held[client]:
                del self._held[client]
