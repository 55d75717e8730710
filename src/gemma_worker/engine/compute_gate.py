"""One ``llama_decode`` at a time in the process, first come first served.

Every engine thread runs llama.cpp with as many threads as the machine has cores. Two
decodes at once (two models, or an embedding batch beside a generation step) would each spin
their thread pools against the other's and both slow down several times over. So each engine
holds the gate around its decode: a waiting engine gets the next turn in arrival order, and a
stream's step never waits for more than the one decode ahead of it.

The gate also remembers how long each holder's recent turns took, so that an engine whose work
can be cut (the embedding engine's batches) keeps its turns short beside someone else's
(:meth:`ComputeGate.others_turn`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

#: Weight of the newest turn in a holder's running average.
_ALPHA = 0.2


@dataclass(slots=True)
class _Holder:
    seconds: float
    last_end: float


class ComputeGate:
    """A FIFO lock with a record of each holder's turn lengths (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = False
        self._waiting: deque[threading.Event] = deque()
        self._holders: dict[str, _Holder] = {}

    @contextlib.contextmanager
    def turn(self, holder: str) -> Iterator[None]:
        """Hold the gate for one decode as ``holder`` (an engine's name)."""
        self._acquire()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self._release(holder, end - t0, end)

    def others_turn(self, holder: str, within_s: float = 0.25) -> float | None:
        """The typical turn (seconds) of the busiest other holder seen in the last
        ``within_s`` seconds; ``None`` when nobody else used the gate lately."""
        now = time.perf_counter()
        with self._lock:
            turns = [
                h.seconds
                for name, h in self._holders.items()
                if name != holder and now - h.last_end <= within_s
            ]
        return min(turns) if turns else None

    def _acquire(self) -> None:
        with self._lock:
            if not self._held and not self._waiting:
                self._held = True
                return
            ready = threading.Event()
            self._waiting.append(ready)
        ready.wait()  # the releaser hands the gate over: ``_held`` stays True

    def _release(self, holder: str, seconds: float, end: float) -> None:
        with self._lock:
            known = self._holders.get(holder)
            if known is None:
                self._holders[holder] = _Holder(seconds, end)
            else:
                known.seconds += _ALPHA * (seconds - known.seconds)
                known.last_end = end
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._held = False
