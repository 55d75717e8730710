"""Scheduling decisions for the batching engine, as plain data (sans-I/O).

The engine runs in steps. Before each step it asks :func:`plan_step` which sequences contribute
tokens to the next ``llama_decode`` batch: every decoding sequence that is not paused gives one
token; the rest of the batch goes to prompt processing (prefill), oldest request first, in chunks
no larger than ``prefill_chunk`` so a long prompt never freezes the running streams for long.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SlotView:
    """What the planner needs to know of one occupied slot."""

    slot: int
    #: Order of admission into a slot (lower = older); prefill is served oldest first.
    order: int
    #: Prompt tokens not yet processed; 0 once the sequence is decoding.
    prefill_remaining: int
    #: A decoding sequence whose consumer is behind; it sits this step out.
    paused: bool = False


@dataclass(frozen=True, slots=True)
class StepEntry:
    """``n_tokens`` tokens of ``slot`` go into this step's batch."""

    slot: int
    n_tokens: int
    prefill: bool


def plan_step(slots: Sequence[SlotView], n_batch: int, prefill_chunk: int) -> list[StepEntry]:
    """Choose this step's batch: all unpaused decoders, then prefill chunks within budget."""
    plan = [
        StepEntry(s.slot, 1, prefill=False)
        for s in slots
        if s.prefill_remaining == 0 and not s.paused
    ]
    budget = min(n_batch - len(plan), prefill_chunk)
    for s in sorted((s for s in slots if s.prefill_remaining > 0), key=lambda s: s.order):
        if budget <= 0:
            break
        take = min(s.prefill_remaining, budget)
        plan.append(StepEntry(s.slot, take, prefill=True))
        budget -= take
    return plan


class QueueFullError(Exception):
    """The admission queue has no room."""


class AdmissionQueue(Generic[T]):
    """First come, first served wait list in front of the slots, with a hard capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def push(self, item: T) -> int:
        """Append ``item``; return its 1-based position; :class:`QueueFullError` when full."""
        if len(self._items) >= self.capacity:
            raise QueueFullError
        self._items.append(item)
        return len(self._items)

    def peek(self) -> T:
        """The oldest item, left in place."""
        return self._items[0]

    def pop(self) -> T:
        """Take the oldest item."""
        return self._items.popleft()

    def remove(self, item: T) -> bool:
        """Drop ``item`` if it is waiting; return whether it was."""
        try:
            self._items.remove(item)
        except ValueError:
            return False
        return True


class SlotPool:
    """Which of ``n`` slots are free, and whose KV cache a free slot still holds.

    A slot released with a ``key`` (a session id) keeps that conversation's cache. ``acquire``
    hands a request the slot holding its own key when that slot is free ("warm"); otherwise
    the lowest empty slot; otherwise the free slot whose cache has been unused longest, whose
    cache is then given up.
    """

    def __init__(self, n: int) -> None:
        self.size = n
        self._free: set[int] = set(range(n))
        self._keys: dict[int, str] = {}  # free slot -> key of the cache it holds
        self._released: dict[int, int] = {}  # free slot -> when it was released
        self._clock = 0

    @property
    def n_free(self) -> int:
        """Number of free slots."""
        return len(self._free)

    def holder(self, key: str) -> int | None:
        """The free slot holding ``key``'s cache, if any."""
        return next((s for s, k in self._keys.items() if k == key), None)

    def acquire(self, key: str | None = None) -> tuple[int, bool] | None:
        """A free slot and whether it holds ``key``'s cache; ``None`` when all are busy."""
        if not self._free:
            return None
        warm = None if key is None else self.holder(key)
        if warm is not None:
            slot = warm
        else:
            empty = [s for s in self._free if s not in self._keys]
            slot = min(empty) if empty else min(self._free, key=self._released.__getitem__)
        self._free.remove(slot)
        self._keys.pop(slot, None)
        self._released.pop(slot, None)
        return slot, warm is not None

    def release(self, slot: int, key: str | None = None) -> None:
        """Give ``slot`` back, noting that it keeps ``key``'s cache (if a key is given)."""
        if slot in self._free or not 0 <= slot < self.size:
            raise ValueError(f"slot {slot} is not in use")
        self._free.add(slot)
        self._clock += 1
        self._released[slot] = self._clock
        if key is not None:
            for other in [s for s, k in self._keys.items() if k == key]:
                del self._keys[other]  # one cache per key: the newest wins
            self._keys[slot] = key

    def forget(self, key: str) -> int | None:
        """Stop treating ``key``'s cache as reusable; the slot that held it, if any."""
        slot = self.holder(key)
        if slot is not None:
            del self._keys[slot]
        return slot
