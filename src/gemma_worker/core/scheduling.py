"""Scheduling decisions for the batching engine, as plain data (sans-I/O).

The engine runs in steps. Before each step it asks :func:`plan_step` which sequences contribute
tokens to the next ``llama_decode`` batch: every decoding sequence that is not paused gives one
token; the rest of the batch goes to prompt processing (prefill), oldest request first, in chunks
small enough that a long prompt never freezes the running streams for long (see
:mod:`gemma_worker.core.pacing`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


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
    #: Draft tokens a decoding sequence verifies beside its next token (speculation).
    draft: int = 0


@dataclass(frozen=True, slots=True)
class StepEntry:
    """``n_tokens`` tokens of ``slot`` go into this step's batch."""

    slot: int
    n_tokens: int
    prefill: bool


def plan_step(
    slots: Sequence[SlotView], n_batch: int, prefill_beside: Callable[[int, int], int]
) -> list[StepEntry]:
    """Choose this step's batch: all unpaused decoders, in slot order (each its next token
    and its draft), then prefill chunks.

    A prompt alone gets the whole batch. Beside ``n`` decoding tokens (drafts included),
    with ``s`` sequences in the step (decoding or prefilling), prefill gets at most
    ``prefill_beside(n, s)`` tokens, so the streams keep flowing.

    Slot order matters: with a KV buffer per slot, llama.cpp splits a batch into micro-batches
    of *consecutive* sequence ids in the order their tokens appear, and runs the whole model
    once per micro-batch. Decoders listed in admission order (which prefix caching scatters
    across slots) would cost several forward passes per step instead of one.
    """
    plan = [
        StepEntry(s.slot, 1 + s.draft, prefill=False)
        for s in sorted(slots, key=lambda s: s.slot)
        if s.prefill_remaining == 0 and not s.paused
    ]
    n_decode = sum(e.n_tokens for e in plan)
    budget = n_batch - n_decode
    prefilling = sorted((s for s in slots if s.prefill_remaining > 0), key=lambda s: s.order)
    if plan:
        budget = min(budget, prefill_beside(n_decode, len(plan) + len(prefilling)))
    for s in prefilling:
        if budget <= 0:
            break
        take = min(s.prefill_remaining, budget)
        plan.append(StepEntry(s.slot, take, prefill=True))
        budget -= take
    return plan


@dataclass(frozen=True, slots=True)
class CachedPrefix:
    """What a free slot's KV cache holds: ``tokens`` (positions 0..n-1), computed for a request
    in ``scope`` (an API key id; ``None`` when keys are off), of ``session`` if it was a turn."""

    scope: str | None
    tokens: tuple[int, ...]
    session: str | None = None
    #: Whether the prompt parsed special tokens out of its text (a chat prompt): a cache of
    #: the other kind holds other tokens for the same text.
    special: bool = False


@dataclass(frozen=True, slots=True)
class Acquired:
    """A slot handed out. ``cache`` is what the slot held (``None``: empty); it is given up
    unless the request continues from it. ``reused`` is the slot whose cache the request
    continues from (``None``: a cold start): ``slot`` itself, or, when placement put the
    request elsewhere, another free slot whose cache must first be copied into ``slot``."""

    slot: int
    cache: CachedPrefix | None
    reused: int | None = None


class SlotPool:
    """The one owner of which slots are free and what each free slot's KV cache holds.

    Every request leaves its cache behind when it releases its slot (automatic prefix caching).
    ``acquire`` is given how many tokens of each same-scope cache the new prompt can reuse; it
    picks the cache with the longest match, ties going to the least recently used.

    Placement: without ``compact`` the request runs in that cache's slot; with no match, in
    the lowest empty slot, else the least recently used one's cache is evicted. With
    ``compact`` (a KV buffer per slot, where llama.cpp runs the model once per run of
    consecutive busy slots in a batch), the request goes where it adds no new run of busy
    slots if it can (best: a slot closing a gap), and a reused cache is copied there when it
    sits elsewhere; among equals, the reused cache's own slot, then empty slots, then the
    least recently used.
    """

    def __init__(self, n: int, *, compact: bool = False) -> None:
        self.size = n
        self.compact = compact
        self._free: set[int] = set(range(n))
        self._caches: dict[int, CachedPrefix] = {}  # free slot -> its cache
        self._released: dict[int, int] = {}  # free slot -> when it was released
        self._clock = 0

    @property
    def n_free(self) -> int:
        """Number of free slots."""
        return len(self._free)

    @property
    def n_empty(self) -> int:
        """Free slots that hold no cache."""
        return len(self._free) - len(self._caches)

    def cached(self, scope: str | None, special: bool) -> list[tuple[int, CachedPrefix]]:
        """The free slots holding a cache of ``scope`` (and of that tokenisation)."""
        return [
            (s, c) for s, c in self._caches.items() if c.scope == scope and c.special == special
        ]

    def caches(self) -> list[tuple[int, CachedPrefix]]:
        """Every free slot's cache."""
        return list(self._caches.items())

    def holder(self, session: str) -> int | None:
        """The free slot holding ``session``'s most recent cache, if any."""
        slots = [s for s, c in self._caches.items() if c.session == session]
        return max(slots, key=self._released.__getitem__) if slots else None

    def _busy_neighbours(self, slot: int) -> int:
        return sum(0 <= n < self.size and n not in self._free for n in (slot - 1, slot + 1))

    def _evict_order(self, slot: int) -> tuple[int, int, int]:
        """Sort key among free slots: the lowest empty one, else the least recently used."""
        if slot not in self._caches:
            return (0, 0, slot)
        return (1, self._released[slot], slot)

    def acquire(self, matches: Mapping[int, int] | None = None) -> Acquired | None:
        """A free slot (``None`` when all are busy). ``matches`` maps free slots whose cache the
        request may reuse to the number of reusable tokens."""
        if not self._free:
            return None
        usable = {s: n for s, n in (matches or {}).items() if n > 0 and s in self._caches}
        best = max(usable, key=lambda s: (usable[s], -self._released[s])) if usable else None
        candidates = self._free
        if self.compact:
            neighbours = {s: self._busy_neighbours(s) for s in self._free}
            most = max(neighbours.values())
            candidates = {s for s, n in neighbours.items() if n == most}
        if best is not None and best in candidates:
            slot = best
        else:
            slot = min(candidates, key=self._evict_order)
        self._free.remove(slot)
        cache = self._caches.pop(slot, None)
        self._released.pop(slot, None)
        return Acquired(slot, cache, reused=best)

    def gap_move(self) -> tuple[int, int] | None:
        """With ``compact``, when the busy slots form more than one run: (the highest busy
        slot, the lowest free slot between busy ones). Moving that request there never adds
        a run and shrinks the span, so repeated moves end with one run."""
        if not self.compact:
            return None
        busy = sorted(set(range(self.size)) - self._free)
        if not busy:
            return None
        gaps = [s for s in range(busy[0], busy[-1]) if s in self._free]
        return (busy[-1], gaps[0]) if gaps else None

    def relocate(self, src: int, dst: int) -> CachedPrefix | None:
        """The request in busy slot ``src`` moves to free slot ``dst``; ``src`` becomes free and
        empty. Returns the cache ``dst`` held, now given up."""
        if src in self._free or dst not in self._free:
            raise ValueError(f"cannot move slot {src} to slot {dst}")
        self._free.remove(dst)
        cache = self._caches.pop(dst, None)
        self._released.pop(dst, None)
        self._free.add(src)
        self._clock += 1
        self._released[src] = self._clock
        return cache

    def release(self, slot: int, cache: CachedPrefix | None = None) -> None:
        """Give ``slot`` back, holding ``cache`` (``None``: its KV cache was cleared)."""
        if slot in self._free or not 0 <= slot < self.size:
            raise ValueError(f"slot {slot} is not in use")
        self._free.add(slot)
        self._clock += 1
        self._released[slot] = self._clock
        if cache is not None:
            self._caches[slot] = cache

    def forget(self, session: str) -> list[int]:
        """Drop every cache of ``session`` (it was deleted); the slots that held one."""
        slots = [s for s, c in self._caches.items() if c.session == session]
        for slot in slots:
            del self._caches[slot]
        return slots
