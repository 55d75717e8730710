"""How many prompt tokens a step may carry beside decoding streams (sans-I/O).

A step that processes prompt tokens delays every stream decoding in it. Alone, a prompt gets
the whole batch; beside streams, it gets as many tokens as keep that step within
``gap_factor`` times a decode-only step, judged from the costs of the steps seen so far. The
pacer only learns from what the engine reports (:meth:`PrefillPacer.observe`); it never
reads a clock itself.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Weight of the newest observation in the running averages.
_ALPHA = 0.2


@dataclass(slots=True)
class _Average:
    value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + _ALPHA * (x - self.value)


class PrefillPacer:
    """Learns step costs; answers how many prompt tokens fit beside ``n_decode`` streams."""

    def __init__(self, *, gap_factor: float, max_chunk: int, min_chunk: int = 8) -> None:
        """``gap_factor``: the longest a step with prompt tokens may take, in decode-only
        steps of as many streams. ``max_chunk``: never more prompt tokens than this beside
        streams (the budget until costs are known). ``min_chunk``: never fewer, so a prompt
        always progresses."""
        self.gap_factor = gap_factor
        self.max_chunk = max_chunk
        self.min_chunk = min(min_chunk, max_chunk)
        #: Seconds of a decode-only step, by number of streams in it.
        self._decode: dict[int, _Average] = {}
        #: Seconds per prompt token on top of the step's decoding.
        self._per_token = _Average()

    def _decode_seconds(self, n_decode: int) -> float | None:
        """A decode-only step's cost for ``n_decode`` streams: as seen, or for the nearest
        number of streams seen (its fixed part, reading the weights, dominates)."""
        if not self._decode:
            return None
        nearest = min(self._decode, key=lambda n: (abs(n - n_decode), -n))
        return self._decode[nearest].value

    def observe(self, n_decode: int, n_prefill: int, seconds: float) -> None:
        """A step ran: ``n_decode`` streams decoded a token each, ``n_prefill`` prompt tokens
        were processed, in ``seconds``."""
        if n_prefill == 0:
            if n_decode > 0:
                self._decode.setdefault(n_decode, _Average()).add(seconds)
            return
        base = 0.0
        if n_decode > 0:
            known = self._decode_seconds(n_decode)
            if known is None:
                return
            base = known
        self._per_token.add(max(seconds - base, 0.0) / n_prefill)

    def budget(self, n_decode: int) -> int:
        """Prompt tokens the next step may carry beside ``n_decode`` (> 0) decoding streams."""
        decode = self._decode_seconds(n_decode)
        per_token = self._per_token.value
        if decode is None or not per_token:
            return self.max_chunk
        fits = int((self.gap_factor - 1.0) * decode / per_token)
        return max(self.min_chunk, min(self.max_chunk, fits))
