"""Draft-free speculative decoding, the decisions (sans-I/O): what to draft, how much, and
whether a sampled draft token stands.

- :class:`NgramDrafter` drafts from a sequence's own context (prompt and output): the tokens
  that followed the latest earlier occurrence of its current suffix, longest n-gram first
  (prompt-lookup decoding).
- :class:`DraftLength` sets a sequence's draft length from its recent acceptance, and turns
  drafting off for a while when drafts keep failing (they cost a wider step for nothing).
- :func:`accept_draft` is the speculative-sampling rule for a point-mass draft: the output
  distribution stays exactly the model's.

The engine verifies drafts in its batched ``llama_decode``; this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


class NgramDrafter:
    """An index of every n-gram (``min_n`` to ``max_n`` tokens) of a growing token sequence,
    each mapped to where its latest occurrence ended, that drafts continuations."""

    def __init__(self, tokens: Sequence[int] = (), *, min_n: int = 2, max_n: int = 4) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError("need 1 <= min_n <= max_n")
        self.min_n, self.max_n = min_n, max_n
        self._tokens: list[int] = []
        #: n -> n-gram -> end (exclusive) of its latest occurrence before the sequence's end.
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Append accepted tokens (never drafts that may be rejected)."""
        for token in tokens:
            end = len(self._tokens)  # n-grams ending here become "earlier" occurrences now
            for n, ends in self._ends.items():
                if end >= n:
                    ends[tuple(self._tokens[end - n : end])] = end
            self._tokens.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest
        suffix (``max_n`` down to ``min_n`` tokens) seen before; ``[]`` when none was."""
        toks, size = self._tokens, len(self._tokens)
        if k <= 0:
            return []
        for n in range(self.max_n, self.min_n - 1, -1):
            if size < n:
                continue
            end = self._ends[n].get(tuple(toks[size - n :]))
            if end is not None:
                return toks[end : min(end + k, size)]
        return []


@dataclass(slots=True)
class DraftLength:
    """A sequence's draft length: ``max_len`` while drafts are accepted, shorter as they fail,
    off for ``cooldown`` steps once the acceptance falls below ``floor`` (then one probe)."""

    max_len: int = 8
    floor: float = 0.3
    cooldown: int = 16
    #: Weight of the newest verification in the acceptance average.
    alpha: float = 0.3
    acceptance: float = 1.0
    _off_for: int = field(default=0)

    def next(self) -> int:
        """Tokens to draft this step (0: do not speculate)."""
        if self._off_for > 0:
            self._off_for -= 1
            return 1 if self._off_for == 0 else 0  # the step it comes back: a cheap probe
        return max(1, min(self.max_len, round(self.max_len * self.acceptance)))

    def observe(self, drafted: int, accepted: int) -> None:
        """A verification kept ``accepted`` of ``drafted`` tokens."""
        if drafted <= 0:
            return
        rate = accepted / drafted
        self.acceptance += self.alpha * (rate - self.acceptance)
        if self.acceptance < self.floor:
            self._off_for = self.cooldown
            self.acceptance = self.floor  # after the pause, start again from the floor


def accept_draft(
    probs: npt.NDArray[np.float64], draft: int, u: float, rng: np.random.Generator
) -> tuple[bool, int]:
    """Whether the drafted token ``draft`` stands, and the token to emit.

    ``probs`` is the model's distribution at this position (after temperature, top-k, top-p,
    grammar: every filter the sampler applies), ``u`` a uniform draw in [0, 1). A point-mass
    draft is accepted with probability ``p(draft)``; if not, the token is drawn from ``p``
    without ``draft``, renormalised. The emitted token is then distributed exactly as ``p``
    (the speculative-sampling rule with q = the draft's point mass)."""
    p = float(probs[draft])
    if u < p:
        return True, draft
    rest = probs.astype(np.float64, copy=True)
    rest[draft] = 0.0
    total = rest.sum()
    if total <= 0.0:  # p(draft) was 1 up to rounding: nothing else can come out
        return True, draft
    return False, int(rng.choice(len(rest), p=rest / total))
