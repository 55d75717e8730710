"""Follow a GBNF grammar's parse stacks as llama.cpp does, and tell how much text the answer
still needs (sans-I/O).

A state is llama.cpp's: a set of pushdown stacks of element positions (top last, each top a
character element; an empty stack means the answer may end here) plus an incomplete UTF-8
character. :meth:`GrammarWalk.accept` moves it over a token's bytes exactly as
``llama_grammar_accept_token`` does. What is new is the length analysis, computed once per
grammar: for each element position, the fewest UTF-8 bytes that complete its sequence
(characters cost the byte length of their cheapest member, rules their cheapest alternative: a
fixpoint over the rules), and one completion of that length. So for any state,
:meth:`GrammarWalk.needed_bytes` is a sum over each stack's positions and
:meth:`GrammarWalk.shortest` is the concatenation of their shortest texts. A token is at least
one byte, so ``needed_bytes`` also bounds the tokens the answer needs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from gemma_worker.core.gbnf import GbnfError, Rules, Type, parse_gbnf
from gemma_worker.core.gbnf_lengths import INFINITE, shortest_derivations

__all__ = ["MAX_STACKS", "GrammarWalk", "WalkState"]

#: The most parse stacks a state may have: past it, :meth:`GrammarWalk.accept` raises
#: :class:`~gemma_worker.core.gbnf.GbnfError` (a pathological grammar, e.g. nested optional
#: groups, whose stacks multiply: following it would cost seconds per token).
MAX_STACKS = 2048

Stack = tuple[int, ...]
_CHAR_STARTS = (Type.CHAR, Type.CHAR_NOT, Type.CHAR_ANY)
# Preferred stand-ins for a character class, before any other member: readable, one byte.
_PREFERRED = [ord(c) for c in "a0 "] + list(range(0x21, 0x7F))


@dataclass(frozen=True, slots=True)
class WalkState:
    """Where the answer is in the grammar: the live stacks, and ``n_remain`` continuation
    bytes still owed by a character whose first bytes (``partial``, their value bits) came
    (``n_remain`` -1: an invalid UTF-8 sequence, which nothing completes)."""

    stacks: tuple[Stack, ...]
    partial: int = 0
    n_remain: int = 0


@dataclass(frozen=True, slots=True)
class _CharSet:
    positive: bool
    ranges: tuple[tuple[int, int], ...]
    any: bool

    def matches(self, c: int) -> bool:
        found = self.any or any(lo <= c <= hi for lo, hi in self.ranges)
        return found == self.positive

    def matches_partial(self, partial: int, n_remain: int) -> bool:
        """llama.cpp's ``llama_grammar_match_partial_char``: whether some completion of the
        character could be in the set."""
        if n_remain < 0 or (n_remain == 1 and partial < 2):
            return False
        low = partial << (n_remain * 6)
        high = low | ((1 << (n_remain * 6)) - 1)
        if low == 0:
            low = {2: 1 << 11, 3: 1 << 16}.get(n_remain, low)
        if self.any:
            return True
        if any(lo <= high and low <= hi for lo, hi in self.ranges):
            return self.positive
        return not self.positive

    def stand_in(self) -> int | None:
        """A member with the shortest UTF-8 form (readable ASCII first); ``None`` if empty.
        NUL never counts: llama.cpp reads token text as a C string."""
        for c in _PREFERRED:
            if self.matches(c):
                return c
        edges = sorted({1, 0x80, 0x800, 0x10000} | {lo for lo, _ in self.ranges})
        edges += sorted({hi + 1 for _, hi in self.ranges})
        for c in sorted(set(edges)):
            if 0 < c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF and self.matches(c):
                return c
        return None


@functools.lru_cache(maxsize=4096)
def _stand_in(charset: _CharSet) -> str | None:
    """:meth:`_CharSet.stand_in` as text, once per distinct set (a grammar of thousands of
    literals has a few dozen distinct characters)."""
    c = charset.stand_in()
    return None if c is None else chr(c)


def _utf8_len(c: int) -> int:
    return 1 if c < 0x80 else 2 if c < 0x800 else 3 if c < 0x10000 else 4


class GrammarWalk:
    """One grammar's rules laid out flat (positions are indexes into them), with the length
    analysis. Immutable once built except for memo tables, so one instance may serve many
    requests on several threads."""

    def __init__(self, rules: Rules) -> None:
        self.types: list[Type] = []
        self.values: list[int] = []
        self._alts: list[list[int]] = []  # rule id -> the start positions of its alternatives
        for rule in rules.rules:
            base = len(self.types)
            starts = [base]
            for i, (kind, value) in enumerate(rule):
                self.types.append(kind)
                self.values.append(value)
                if kind == Type.ALT:
                    starts.append(base + i + 1)
            self._alts.append(starts)
        self.root = rules.root
        self._sets: dict[int, _CharSet] = {}
        self._after: dict[int, int] = {}
        self._stand_in: dict[int, str | None] = {}
        for p, kind in enumerate(self.types):
            if kind in _CHAR_STARTS:
                self._read_set(p)
        self._expansions: dict[int, tuple[Stack, ...]] = {}
        costs = {
            p: INFINITE if c is None else len(c.encode("utf-8", "surrogatepass"))
            for p, c in self._stand_in.items()
        }
        derivations = shortest_derivations(self.types, self.values, self._alts, costs)
        self._min = derivations.least
        self._best_alt = derivations.best
        self._shortest_rule: dict[int, str] = {}

    @classmethod
    def parse(cls, text: str) -> GrammarWalk:
        """The walk of GBNF ``text`` (:class:`~gemma_worker.core.gbnf.GbnfError` where
        llama.cpp refuses it)."""
        return cls(parse_gbnf(text))

    # --- layout -----------------------------------------------------------------------------
    def _is_end(self, p: int) -> bool:
        return self.types[p] in (Type.END, Type.ALT)

    def _read_set(self, p: int) -> None:
        kind = self.types[p]
        ranges: list[tuple[int, int]] = []
        q = p
        while True:
            if self.types[q + 1] == Type.CHAR_RNG_UPPER:
                ranges.append((self.values[q], self.values[q + 1]))
                q += 2
            else:
                if self.types[q] != Type.CHAR_ANY:
                    ranges.append((self.values[q], self.values[q]))
                q += 1
            if self.types[q] != Type.CHAR_ALT:
                break
        charset = _CharSet(kind != Type.CHAR_NOT, tuple(ranges), kind == Type.CHAR_ANY)
        self._sets[p] = charset
        self._after[p] = q
        self._stand_in[p] = _stand_in(charset)

    # --- stacks -----------------------------------------------------------------------------
    def _expand(self, p: int) -> tuple[Stack, ...]:
        """What position ``p`` (the rest of a sequence) becomes on a stack: stack pieces
        (bottom first) whose top is a character element, ``()`` when it can be empty.
        Memoized; threads may race to fill an entry, with the same result."""
        done = self._expansions.get(p)
        return done if done is not None else self._expand_from(p, frozenset())[0]

    def _expand_from(self, p: int, busy: frozenset[int]) -> tuple[tuple[Stack, ...], set[int]]:
        """:meth:`_expand` below the positions ``busy`` being expanded on the way here. A
        position met again on its own way can only come back to what is being listed there
        (llama.cpp skips a stack it has seen): it is skipped, and the results listed until
        the way returns to it are partial, so they are not kept. Also the positions skipped."""
        done = self._expansions.get(p)
        if done is not None:
            return done, set()
        if p in busy:
            return (), {p}
        kind = self.types[p]
        skipped: set[int] = set()
        out: list[Stack] = []
        if kind in (Type.END, Type.ALT):
            out.append(())
        elif kind == Type.RULE_REF:
            nxt, inner = p + 1, busy | {p}
            head: Stack = () if self._is_end(nxt) else (nxt,)
            for alt in self._alts[self.values[p]]:
                pieces, cut = self._expand_from(alt, inner)
                skipped |= cut
                for piece in pieces:
                    if piece:
                        out.append(head + piece)
                    else:
                        rest, cut = self._expand_from(nxt, inner)
                        skipped |= cut
                        out.extend(rest)
                if len(out) > MAX_STACKS:
                    raise GbnfError("the grammar has too many parse stacks here")
        else:
            out.append((p,))
        skipped.discard(p)
        result = tuple(dict.fromkeys(out))
        if not skipped:
            self._expansions[p] = result
        return result, skipped

    def _advance(self, stack: Stack, out: list[Stack]) -> None:
        """``llama_grammar_advance_stack``: ``stack`` with its top expanded to characters."""
        if not stack:
            out.append(())
            return
        for piece in self._expand(stack[-1]):
            if piece:
                out.append(stack[:-1] + piece)
            else:
                self._advance(stack[:-1], out)

    def initial(self) -> WalkState:
        """The state before any text."""
        out: list[Stack] = []
        for alt in self._alts[self.root]:
            self._advance(() if self._is_end(alt) else (alt,), out)
        return WalkState(tuple(dict.fromkeys(out)))

    def _accept_char(self, stacks: tuple[Stack, ...], c: int) -> tuple[Stack, ...]:
        out: list[Stack] = []
        for stack in stacks:
            if stack and self._sets[stack[-1]].matches(c):
                after = self._after[stack[-1]]
                self._advance(stack[:-1] if self._is_end(after) else (*stack[:-1], after), out)
                if len(out) > MAX_STACKS:
                    raise GbnfError("the grammar has too many parse stacks here")
        return tuple(dict.fromkeys(out))

    def accept(self, state: WalkState, piece: bytes) -> WalkState | None:
        """The state after a token whose text is ``piece``; ``None`` when the grammar refuses
        it (llama.cpp would not have let it be sampled). :class:`GbnfError` past
        :data:`MAX_STACKS`."""
        if not piece or piece[0] == 0:
            return None
        piece = piece.split(b"\0", 1)[0]
        points, partial, n_remain = _decode(piece, state.partial, state.n_remain)
        stacks = state.stacks
        for c in points:
            stacks = self._accept_char(stacks, c)
            if not stacks:
                return None
        if n_remain < 0:
            return None
        if n_remain > 0:
            stacks = tuple(
                s for s in stacks if s and self._sets[s[-1]].matches_partial(partial, n_remain)
            )
            if not stacks:
                return None
        return WalkState(stacks, partial, n_remain)

    # --- lengths ----------------------------------------------------------------------------
    def needed_bytes(self, state: WalkState) -> int:
        """The fewest bytes that complete the answer from ``state`` (0: it may end here)."""
        least = self._min
        if state.n_remain > 0:  # the character's last bytes, then what follows it
            return min(
                (
                    state.n_remain + least[self._after[s[-1]]] + sum(least[q] for q in s[:-1])
                    for s in state.stacks
                ),
                default=INFINITE,
            )
        return min((sum(least[q] for q in s) for s in state.stacks), default=INFINITE)

    def complete(self, state: WalkState) -> bool:
        """Whether the answer may end at ``state``."""
        return state.n_remain == 0 and () in state.stacks

    def shortest(self, state: WalkState) -> str | None:
        """A text of :meth:`needed_bytes` bytes that completes the answer (``None`` inside a
        character, or when nothing completes it)."""
        if state.n_remain != 0 or not state.stacks:
            return None
        least = self._min
        stack = min(state.stacks, key=lambda s: sum(least[q] for q in s))
        if sum(least[q] for q in stack) >= INFINITE:
            return None
        return "".join(self._shortest_from(q) for q in reversed(stack))

    def _shortest_from(self, p: int) -> str:
        parts: list[str] = []
        while not self._is_end(p):
            if self.types[p] == Type.RULE_REF:
                parts.append(self._shortest_of_rule(self.values[p]))
                p += 1
            else:
                c = self._stand_in[p]
                assert c is not None
                parts.append(c)
                p = self._after[p]
        return "".join(parts)

    def _shortest_of_rule(self, rule: int) -> str:
        done = self._shortest_rule.get(rule)
        if done is None:
            done = self._shortest_from(self._best_alt[rule])
            self._shortest_rule[rule] = done
        return done


def _decode(data: bytes, partial: int, n_remain: int) -> tuple[list[int], int, int]:
    """llama.cpp's ``decode_utf8`` with a carried partial character: the complete code points,
    and the new partial value and remaining count (-1: invalid)."""
    points: list[int] = []
    pos = 0
    value = partial
    start_remain = n_remain
    while pos < len(data) and n_remain > 0:
        byte = data[pos]
        if byte >> 6 != 2:
            return [], 0, -1
        value = (value << 6) + (byte & 0x3F)
        pos += 1
        n_remain -= 1
    if start_remain > 0 and n_remain == 0:
        points.append(value)
    lookup = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)
    while pos < len(data):
        first = data[pos]
        n_remain = lookup[first >> 4] - 1
        if n_remain < 0:
            return [], 0, -1
        value = first & ((1 << (7 - n_remain)) - 1)
        pos += 1
        while pos < len(data) and n_remain > 0:
            value = (value << 6) + (data[pos] & 0x3F)
            pos += 1
            n_remain -= 1
        if n_remain == 0:
            points.append(value)
    return points, value, n_remain
