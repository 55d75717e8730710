"""Draft-free speculative decoding, the decisions (sans-I/O): what to draft, how much, and
whether a sampled draft token stands.

- :class:`NgramDrafter` drafts from a sequence's own context (prompt and output): the tokens
  that followed the latest earlier occurrence of its current suffix, longest n-gram first
  (prompt-lookup decoding).
- :class:`Acceptance` estimates how likely a sequence's next draft token is to stand, from
  its recent verifications (optimistic at first, and again after a while without drafting);
  a sequence keeps one for each n-gram length that finds its drafts, since a draft found by
  a long match is copied text far more often than one found by two tokens.
- :func:`plan_drafts` chooses each sequence's draft length for a step: the lengths that
  maximise the step's expected tokens per second, judged by what steps of each width cost
  (:class:`~gemma_worker.core.step_cost.StepCosts`), such that no stream in the step expects
  to lose more than a bounded share of its own rate. So a sequence whose drafts fail stops
  drafting, and a batch of 16 streams does not turn into a slow, wide step.

The engine verifies drafts in its batched ``llama_decode``: it samples at every drafted
position as it would without speculation and keeps a draft token while it equals the token
sampled before it. For a draft that is one token (a point mass q), that is the
speculative-sampling rule itself: accepted with probability min(1, p(d)/q(d)) = p(d), else the
token comes from p without d, renormalised; so greedy and seeded outputs are the same as
without speculation, token for token. This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gemma_worker.core.step_cost import StepCosts

#: The n-gram lengths indexed by default.
NGRAM_SIZES = (2, 3, 4, 6, 8, 12)


class NgramDrafter:
    """An index of the n-grams of a growing token sequence (each length in ``sizes``), each
    mapped to where its latest occurrence ended, that drafts continuations. Long n-grams find
    the place being copied; short ones draft when no long one matches."""

    def __init__(self, tokens: Sequence[int] = (), *, sizes: Sequence[int] = NGRAM_SIZES) -> None:
        if not sizes or min(sizes) < 1:
            raise ValueError("n-gram sizes must be >= 1")
        self.sizes = sorted(set(sizes), reverse=True)
        self._tokens: list[int] = []
        #: n -> n-gram -> end (exclusive) of its latest occurrence before the sequence's end.
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        #: token -> end of its latest occurrence before the sequence's end (for guesses).
        self._after: dict[int, int] = {}
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
            if end:
                self._after[self._tokens[end - 1]] = end
            self._tokens.append(token)

    def draft(self, k: int) -> list[int]:
        """``k`` tokens that followed the latest earlier occurrence of the longest suffix (of
        the indexed sizes) seen before, the text since repeated when that is shorter;
        ``[]`` when no suffix was seen before."""
        return self.lookup(k)[1]

    def lookup(self, k: int) -> tuple[int, list[int]]:
        """:meth:`draft`'s tokens with the length of the n-gram that found them (0 with no
        draft): a draft that continues a long match is most likely text being copied, one
        found by two tokens a guess (:class:`Acceptance` is kept apart for each length)."""
        toks, size = self._tokens, len(self._tokens)
        if k <= 0:
            return 0, []
        for n in self.sizes:
            if size < n:
                continue
            end = self._ends[n].get(tuple(toks[size - n :]))
            if end is not None:
                if end + k <= size:
                    return n, toks[end : end + k]
                # The match ends less than k tokens back: the text since repeats what
                # followed it, so the draft goes round that period again (a loop, as
                # n-gram chains would draft it).
                period = size - end
                return n, [toks[end + i % period] for i in range(k)]
        return 0, []

    def guess(self, k: int, after: Sequence[int] = ()) -> list[int]:
        """``k`` cheap guesses to follow the sequence and then ``after``: what followed the
        latest earlier occurrence of the last token, else that token again. They fill a
        step's shape (:func:`plan_drafts`), not a draft's promise."""
        if k <= 0:
            return []
        toks = self._tokens
        last = after[-1] if after else toks[-1] if toks else 0
        end = self._after.get(last)
        if end is None or end >= len(toks):
            return [last] * k
        return [toks[min(end + i, len(toks) - 1)] for i in range(k)]


#: Prior belief in a draft token, as pseudo-verifications: 9 in 10 stand, weighing about three
#: tokens (a few verifications outweigh it).
_PRIOR_HITS, _PRIOR_MISSES = 2.7, 0.3
#: Weight kept by earlier evidence at each new verification, and at each step a sequence
#: could have drafted but did not (so a sequence switched off tries again after a while).
_DECAY, _REST_DECAY = 0.85, 0.97


@dataclass(slots=True)
class Acceptance:
    """How likely a sequence's next draft token is to stand, given that the ones before it
    did: draft tokens that stood against drafts that ended in a miss, recent ones weighing
    most, beside an optimistic prior."""

    hits: float = 0.0
    misses: float = 0.0

    @property
    def rate(self) -> float:
        """The chance that a draft token stands (after its predecessors stood)."""
        h, m = self.hits + _PRIOR_HITS, self.misses + _PRIOR_MISSES
        return h / (h + m)

    def observe(self, drafted: int, accepted: int) -> None:
        """A verification kept ``accepted`` of ``drafted`` tokens."""
        if drafted <= 0:
            return
        self.hits = self.hits * _DECAY + accepted
        self.misses = self.misses * _DECAY + (1.0 if accepted < drafted else 0.0)

    def rest(self) -> None:
        """A step in which the sequence could have drafted and did not: its evidence fades."""
        self.hits *= _REST_DECAY
        self.misses *= _REST_DECAY


def expected_accepted(rate: float, k: int) -> float:
    """Draft tokens expected to stand out of ``k`` when each stands with ``rate`` once its
    predecessors have (a draft stops counting at its first miss)."""
    if k <= 0 or rate <= 0.0:
        return 0.0
    if rate >= 1.0:
        return float(k)
    return rate * (1.0 - rate**k) / (1.0 - rate)


#: The most a stream's expected rate may fall, as a factor, for the others' drafts in its step.
STEP_FACTOR = 1.5


#: Tokens per sequence tried for the sequences that draft (its next token and its draft):
#: whole row blocks, but for the narrowest.
_TOKENS = (2, 3, 4, 8, 12, 16, 24, 32, 48, 64)


def plan_drafts(
    wants: Mapping[int, int],
    rates: Mapping[int, float],
    costs: StepCosts,
    *,
    room: int,
    caps: Mapping[int, int] | None = None,
    step_factor: float = STEP_FACTOR,
) -> dict[int, int]:
    """Draft tokens per slot for the next step.

    ``rates``: every decoding sequence of the step, by slot, with its acceptance rate (those
    without a draft too); ``wants``: the tokens each sequence with a draft has drafted;
    ``caps``: the most draft tokens each sequence may verify (default: its ``wants``);
    ``room``: draft tokens the batch can take. Two kinds of plan are weighed, each for a
    ladder of lengths ``k``: the ``m`` sequences of best rate draft up to ``k`` tokens each
    (for every ``m``); or every sequence verifies ``k`` (up to its cap), those whose drafts
    are shorter filling theirs with guesses (:meth:`NgramDrafter.guess`, counted as worth
    nothing), so that the step stays one pass through the model (:func:`step_passes`: a
    step whose sequences bring different numbers of tokens runs in several). A plan's cost
    is that of its passes (:meth:`StepCosts.estimate_step`, the sequences in slot order). The
    plan chosen has the most expected tokens per second (streams plus expected accepted
    drafts, over the step's estimated cost), among those with which every stream in the step
    still expects at least ``1 / step_factor`` of its rate in a step without drafts (so the
    step never widens for a few at the cost of the rest); none at all when no plan beats not
    drafting. The slots a plan gives more than their ``wants`` take guesses for the rest."""
    slots = sorted(rates)
    plain = costs.estimate_step([(s, 1) for s in slots]) if slots else None
    if plain is None:
        return {}
    limit = caps if caps is not None else wants
    order = sorted(wants, key=lambda s: (-rates.get(s, 0.0), s))
    cost_of: dict[tuple[int, ...], float | None] = {}
    best: dict[int, int] = {}
    best_speed = len(slots) / plain

    def weigh(plan: dict[int, int]) -> bool:
        """Keep ``plan``, cut to the room (its last sequences first), if it is the best so
        far; whether it fit the room uncut."""
        nonlocal best, best_speed
        over = sum(plan.values()) - room
        fits = over <= 0
        for s in reversed(list(plan)):
            if over <= 0:
                break
            cut = min(over, plan[s])
            plan[s] -= cut
            over -= cut
        shape = tuple(1 + plan.get(s, 0) for s in slots)
        if shape not in cost_of:
            cost_of[shape] = costs.estimate_step(list(zip(slots, shape, strict=True)))
        cost = cost_of[shape]
        gains = [expected_accepted(rates[s], min(plan.get(s, 0), wants.get(s, 0))) for s in slots]
        # each stream's expected tokens must reach the floor
        floor = 0.0 if cost is None else cost / (step_factor * plain)
        if cost is not None and (floor <= 1.0 or 1.0 + min(gains) >= floor):
            speed = (len(slots) + sum(gains)) / cost
            if speed > best_speed:
                best, best_speed = dict(plan), speed
        return fits

    for tokens in _TOKENS:
        k = tokens - 1
        for m in range(1, len(order) + 1):
            if not weigh({s: min(k, wants[s]) for s in order[:m]}):
                break
        if len(order) < len(slots) or any(wants[s] < k for s in order):
            weigh({s: min(k, limit.get(s, 0)) for s in slots})
        if all(wants[s] <= k for s in order):
            break  # a longer k drafts nothing more
    return {s: n for s, n in best.items() if n}
