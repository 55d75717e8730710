"""The shortest derivation of every rule of a grammar, in bytes (sans-I/O).

Knuth's generalisation of Dijkstra's algorithm (1977, "A generalization of Dijkstra's
algorithm"): an alternative's cost is known once every rule it names is settled; the cheapest
known alternative settles its rule next. Linear in the grammar (with a heap), whatever the
nesting, and each rule's chosen alternative names only rules settled before it, so expanding
the choices always ends (a tie between ``R ::= G R`` and the empty alternative, with ``G``
able to match nothing, picks the one settled first: the empty one).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from gemma_worker.core.gbnf import Type

__all__ = ["INFINITE", "Derivations", "shortest_derivations"]

#: The cost of what no text derives.
INFINITE = 1 << 40


@dataclass(frozen=True, slots=True)
class Derivations:
    """``least[p]``: the fewest bytes that complete the sequence from position ``p``;
    ``best[r]``: the start of rule ``r``'s cheapest alternative (``-1``: none derives text)."""

    least: list[int]
    best: list[int]


def shortest_derivations(
    types: Sequence[Type],
    values: Sequence[int],
    alts: Sequence[Sequence[int]],
    char_cost: dict[int, int],
) -> Derivations:
    """For a flat grammar layout (``alts[r]``: rule ``r``'s alternatives' start positions;
    ``char_cost[p]``: bytes of the character element at ``p``, ``INFINITE`` if it matches
    nothing), the shortest derivations."""
    n_rules = len(alts)
    owner: list[int] = []  # alternative -> its rule
    partial: list[int] = []  # alternative -> its characters' cost, plus settled rules'
    pending: list[int] = []  # alternative -> rule references not settled yet
    users: list[list[int]] = [[] for _ in range(n_rules)]  # rule -> alternatives naming it
    starts: list[int] = []
    for r, rule_alts in enumerate(alts):
        for start in rule_alts:
            a = len(owner)
            owner.append(r)
            starts.append(start)
            cost, refs, p = 0, 0, start
            while types[p] not in (Type.END, Type.ALT):
                if types[p] == Type.RULE_REF:
                    users[values[p]].append(a)
                    refs += 1
                    p += 1
                else:
                    cost = min(cost + char_cost[p], INFINITE)
                    p = _after_char(types, p)
            partial.append(cost)
            pending.append(refs)
    heap = [(partial[a], a) for a in range(len(owner)) if pending[a] == 0]
    heapq.heapify(heap)
    value = [INFINITE] * n_rules
    best = [-1] * n_rules
    while heap:
        cost, a = heapq.heappop(heap)
        r = owner[a]
        if best[r] != -1 or cost >= INFINITE:
            continue
        value[r], best[r] = cost, starts[a]
        for user in users[r]:
            partial[user] = min(partial[user] + cost, INFINITE)
            pending[user] -= 1
            if pending[user] == 0:
                heapq.heappush(heap, (partial[user], user))
    least = [0] * len(types)
    for rule_alts in alts:
        for start in rule_alts:
            positions, p = [], start
            while types[p] not in (Type.END, Type.ALT):
                positions.append(p)
                p = p + 1 if types[p] == Type.RULE_REF else _after_char(types, p)
            total = 0
            for p in reversed(positions):
                own = value[values[p]] if types[p] == Type.RULE_REF else char_cost[p]
                total = min(total + own, INFINITE)
                least[p] = total
    return Derivations(least, best)


def _after_char(types: Sequence[Type], p: int) -> int:
    """The position after the character element starting at ``p``."""
    p += 1
    while types[p] in (Type.CHAR_ALT, Type.CHAR_RNG_UPPER):
        p += 1
    return p
