"""Draft-free speculative decoding, the decisions (sans-I/O): what to draft, how much, and
whether a sampled draft token stands.

- :class:`NgramDrafter` drafts from a sequence's own context (prompt and output): the tokens
  that followed the latest earlier occurrence of its current suffix, longest n-gram first
  (prompt-lookup decoding).
- :class:`DraftLength` sets a sequence's draft length from its recent acceptance, and turns
  drafting off for a while when drafts keep failing (they cost a wider step for nothing).
- :func:`grant_drafts` shares a step's room for draft tokens among the sequences that want
  it, with the step cost model (:class:`~gemma_worker.core.step_cost.CostModel`): only where
  drafts pay, and never so many that the step turns slow for everyone in it.

The engine verifies drafts in its batched ``llama_decode``: it samples at every drafted
position as it would without speculation and keeps a draft token while it equals the token
sampled before it. For a draft that is one token (a point mass q), that is the
speculative-sampling rule itself: accepted with probability min(1, p(d)/q(d)) = p(d), else the
token comes from p without d, renormalised; so greedy and seeded outputs are the same as
without speculation, token for token. This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gemma_worker.core.step_cost import CostModel


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


#: The longest a step with drafts may take, in steps without them (its other streams wait).
STEP_FACTOR = 1.5


def break_even(cost: CostModel, n_rows: int) -> float:
    """The acceptance a draft needs to pay beside ``n_rows`` tokens already in the step: each
    draft token costs ``per_token``; each accepted one saves its sequence a share
    ``(fixed + per_token * n_rows) / n_rows`` of a step. 0 while the cost's fixed part is not
    known (then drafts are tried, and their steps teach the model)."""
    if cost.per_token is None or cost.fixed <= 0.0 or n_rows <= 0:
        return 0.0
    return cost.per_token * n_rows / (cost.fixed + cost.per_token * n_rows)


def grant_drafts(
    wants: Mapping[int, int],
    acceptance: Mapping[int, float],
    cost: CostModel,
    *,
    room: int,
    step_factor: float = STEP_FACTOR,
) -> dict[int, int]:
    """Draft tokens per slot for the next step. ``wants``: the tokens each decoding sequence
    has drafted (slots with none are left out); ``acceptance``: each one's recent acceptance;
    ``room``: batch tokens left. Sequences below the break-even acceptance get none; the
    others, best acceptance first, get their draft while the step stays within
    ``step_factor`` times a step without drafts (and within ``room``)."""
    n_rows = len(acceptance)
    budget = room
    if cost.per_token is not None and cost.per_token > 0.0 and cost.fixed > 0.0:
        plain = cost.fixed + cost.per_token * n_rows
        budget = min(room, int((step_factor - 1.0) * plain / cost.per_token))
    need = break_even(cost, n_rows)
    granted: dict[int, int] = {}
    for slot in sorted(wants, key=lambda s: (-acceptance.get(s, 0.0), s)):
        n = min(wants[slot], budget)
        if n <= 0 or acceptance.get(slot, 0.0) < need:
            continue
        granted[slot] = n
        budget -= n
    return granted
