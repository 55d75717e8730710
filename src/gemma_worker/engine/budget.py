"""Constrained answers that close within their token budget (engine thread).

A request under a grammar (a JSON schema, a tool call) follows its grammar's parse state in
Python (:class:`~gemma_worker.core.gbnf_walk.GrammarWalk`) besides llama.cpp's sampler. Each
sampled token is checked: does the answer stay completable in the tokens left after it? The
bound is cheap while the budget is far: the fewest bytes that complete the answer (a token is
at least one byte). Near the end it is exact for one completion: the shortest completion's text,
tokenized. A token that passes leaves the answer as the model wrote it; one that fails is
replaced by the best token (by the model's own sampling, among the grammar's allowed tokens)
that passes, and failing every other, by the next token of a completion that fits — the *plan*,
which is kept while it is followed, so a completion that fits always exists. An answer that fits
its budget is never touched. Once the answer is complete, an answer that had to be steered ends
there, with finish reason ``stop``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from gemma_worker.core.gbnf import GbnfError
from gemma_worker.core.gbnf_walk import GrammarWalk, WalkState

log = logging.getLogger(__name__)

_TOKENIZED_CACHE = 256
#: No token's text is longer (the longest piece the model's ``piece`` reads).
MAX_PIECE_BYTES = 256


class Vocabulary(Protocol):
    """What the budget reads of the model's vocabulary."""

    def tokenize_whole(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        """``text`` to tokens, as a prompt (no special tokens)."""

    def special_piece(self, token: int) -> bytes:
        """The token's text as llama.cpp's grammar sees it (special tokens spelled out)."""

    def is_eog(self, token: int) -> bool:
        """Whether the token ends the answer."""


def completion_tokens(vocab: Vocabulary, text: str) -> list[int] | None:
    """``text`` as tokens whose texts are exactly ``text`` (``None`` if the tokenizer does not
    give that, e.g. by adding a leading space)."""
    tokens = vocab.tokenize_whole(text, False, False)
    if b"".join(vocab.special_piece(t) for t in tokens) != text.encode("utf-8"):
        return None
    return tokens


def minimum_tokens(walk: GrammarWalk, vocab: Vocabulary, most: int) -> int:
    """The tokens the grammar's shortest answer takes (0 when it may be empty): its
    shortest text, tokenized. When that text is longer than ``most`` tokens could ever spell,
    it is not built: a bound above ``most`` is returned instead."""
    state = walk.initial()
    needed = walk.needed_bytes(state)
    if needed == 0:
        return 0
    if needed > most * MAX_PIECE_BYTES:
        return most + 1
    text = walk.shortest(state)
    tokens = None if text is None else completion_tokens(vocab, text)
    return needed if tokens is None else len(tokens)


@dataclass(frozen=True, slots=True)
class Step:
    """A token that keeps the answer within budget: the state after it and the plan left."""

    token: int
    state: WalkState
    plan: tuple[int, ...] | None


class AnswerBudget:
    """One constrained request's budget. ``room`` is always the tokens the request may still
    generate, the one about to be sampled included."""

    def __init__(self, walk: GrammarWalk, vocab: Vocabulary) -> None:
        self._walk = walk
        self._vocab = vocab
        self.state = walk.initial()
        self._plan: tuple[int, ...] | None = None
        self._tokenized: dict[str, tuple[int, ...] | None] = {}
        #: The answer needed text at some point (it is not free text that may stop anywhere).
        self.structured = walk.needed_bytes(self.state) > 0
        #: A token was replaced to keep the answer within budget.
        self.steered = False
        #: The grammar's and this walk's states disagreed; the budget no longer applies.
        self.broken = False
        self._last_room = 1 << 62

    def check(self, token: int, room: int) -> Step | None:
        """``token`` as a step if the answer can still be completed after it within
        ``room - 1`` tokens; ``None`` if not (or if the walk refuses a token the grammar
        allowed: then :attr:`broken`)."""
        if self.broken:
            return None
        if self._vocab.is_eog(token):  # allowed only where the answer may end
            return Step(token, self.state, None)
        try:
            after = self._walk.accept(self.state, self._vocab.special_piece(token))
            if after is not None:
                return self._fits(token, after, room)
        except (GbnfError, RecursionError):
            pass
        log.warning("the grammar walk refused an allowed token; budget off for this answer")
        self.broken = True
        return None

    def _fits(self, token: int, after: WalkState, room: int) -> Step | None:
        if self._plan and self._plan[0] == token:
            return Step(token, after, self._plan[1:])
        needed = self._walk.needed_bytes(after)
        if needed < room:
            return Step(token, after, None)
        if needed > (room - 1) * MAX_PIECE_BYTES:  # no tokens could spell it: not built
            return None
        plan = self._plan_for(after)
        return None if plan is None or len(plan) >= room else Step(token, after, plan)

    def _plan_for(self, state: WalkState) -> tuple[int, ...] | None:
        text = self._walk.shortest(state)
        if text is None:
            return None
        plan = self._tokenized.get(text)
        if plan is None and text not in self._tokenized:
            tokens = completion_tokens(self._vocab, text)
            plan = None if tokens is None else tuple(tokens)
            if len(self._tokenized) >= _TOKENIZED_CACHE:
                self._tokenized.clear()
            self._tokenized[text] = plan
        return plan

    def fallback(self, room: int) -> Step | None:
        """The plan's next token as a step, if the plan fits ``room`` (a completion known to
        fit; there is none when the budget was below the grammar's minimum)."""
        if self.broken:
            return None
        try:
            plan = self._plan
            if plan is None and self._walk.needed_bytes(self.state) <= room * MAX_PIECE_BYTES:
                plan = self._plan_for(self.state)
            if not plan or len(plan) > room:
                return None
            after = self._walk.accept(self.state, self._vocab.special_piece(plan[0]))
        except (GbnfError, RecursionError):
            self.broken = True
            return None
        return None if after is None else Step(plan[0], after, plan[1:])

    def take(self, step: Step, room: int, *, steered: bool) -> None:
        """Move on past ``step``'s token, sampled with ``room`` tokens left."""
        self.state = step.state
        self._plan = step.plan
        self._last_room = room
        self.steered = self.steered or steered
        if not self.structured and self._walk.needed_bytes(step.state) > 0:
            self.structured = True

    def pass_over(self, token: int, room: int) -> None:
        """Move on past ``token`` although the answer cannot be completed after it."""
        try:
            after = self._walk.accept(self.state, self._vocab.special_piece(token))
        except (GbnfError, RecursionError):
            after = None
        if after is None:
            self.broken = True
        else:
            self.take(Step(token, after, None), room, steered=False)

    def ends_answer(self) -> bool:
        """Whether the answer ends with the token just taken: it is complete, it is
        structured (not free text, which may stop anywhere), and it was steered or no room
        was left after it."""
        return (
            not self.broken
            and self.structured
            and (self.steered or self._last_room <= 1)
            and self._walk.complete(self.state)
        )
