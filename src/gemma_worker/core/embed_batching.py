"""Which embedding inputs go into the next decode (sans-I/O).

Many requests' inputs are packed into one batch, one sequence each, taken round-robin across
the requests so that a small request is not stuck behind a large one. A batch holds at most
``max_tokens`` tokens and ``max_seqs`` inputs; beside someone else's decoding (a stream of
another model) it holds only as many tokens as keep its turn short
(:class:`EmbedPacer`). An input is never split: llama.cpp pools a sequence within one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: Weight of the newest batch in the running cost average.
_ALPHA = 0.3
#: Share of the allowed delay a batch plans to use: its cost is an estimate, and the stream's
#: gap also holds its own Python work between decodes.
_MARGIN = 0.75


@dataclass(eq=False)
class PendingInputs:
    """One request's inputs still to embed: their token counts, and the next one's index."""

    lengths: Sequence[int]
    next: int = 0

    @property
    def done(self) -> bool:
        """Whether every input has been taken."""
        return self.next >= len(self.lengths)


@dataclass(frozen=True, slots=True)
class Pick:
    """Input ``index`` of request ``request`` (its position in the list given to :func:`pack`)."""

    request: int
    index: int


def pack(
    pending: Sequence[PendingInputs], *, max_tokens: int, max_seqs: int, start: int = 0
) -> list[Pick]:
    """The next batch: inputs taken one per request in turn, beginning with request
    ``start``, while they fit. A request whose next input does not fit takes no more this
    time (the others go on); the first input always goes in, whatever its size. Advances
    each request's ``next``."""
    picks: list[Pick] = []
    used = 0
    blocked: set[int] = set()
    n = len(pending)
    while len(picks) < max_seqs:
        progressed = False
        for k in range(n):
            i = (start + k) % n
            req = pending[i]
            if i in blocked or req.done or len(picks) >= max_seqs:
                continue
            size = req.lengths[req.next]
            if picks and used + size > max_tokens:
                blocked.add(i)
                continue
            picks.append(Pick(i, req.next))
            req.next += 1
            used += size
            progressed = True
        if not progressed:
            break
    return picks


@dataclass(slots=True)
class EmbedPacer:
    """Learns what a batch token costs; answers how many tokens the next batch may hold.

    Alone, a batch may be full. Beside another engine whose turns take ``other_turn``
    seconds, a batch is planned to take ``0.75 * (gap_factor - 1) * other_turn``: the other
    engine's next step waits for it, and its stream's token gap stays within ``gap_factor``
    times its own."""

    gap_factor: float
    max_tokens: int
    #: Seconds per token (batch cost over its tokens), learned.
    per_token: float | None = field(default=None)

    def observe(self, n_tokens: int, seconds: float) -> None:
        """A batch of ``n_tokens`` took ``seconds``."""
        if n_tokens <= 0:
            return
        cost = seconds / n_tokens
        self.per_token = (
            cost if self.per_token is None else self.per_token + _ALPHA * (cost - self.per_token)
        )

    def budget(self, other_turn: float | None) -> int:
        """Tokens for the next batch, given the other engine's typical turn (``None``: no
        other engine is busy)."""
        if other_turn is None or self.per_token is None:
            return self.max_tokens if other_turn is None else 1
        fits = int(_MARGIN * (self.gap_factor - 1.0) * other_turn / self.per_token)
        return max(1, min(self.max_tokens, fits))
