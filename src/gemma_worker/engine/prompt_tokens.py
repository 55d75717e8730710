"""Each session's latest prompt, kept tokenized: the next turn's prompt starts with it, so
preparing a turn tokenizes its new text only, not the whole history again.

Tokenizing in pieces (:mod:`gemma_worker.core.text_chunks`) gives the tokens of the whole,
so a prompt's tokens up to any piece start are the tokens of its text up to there; a later
prompt sharing that text reuses them. Used on the vocabulary threads (a lock guards it);
bounded in sessions and characters, least recently used dropped first.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from gemma_worker.engine.llama import LlamaModel


@dataclass(frozen=True, slots=True)
class Tokenized:
    """A prompt text and its tokens; ``cuts`` are the piece starts (character offsets) with
    how many tokens come before each."""

    text: str
    tokens: array[int]
    cuts: tuple[tuple[int, int], ...]
    add_special: bool
    parse_special: bool


class SessionTokens:
    """The latest tokenized prompt of up to ``max_sessions`` sessions, ``max_chars`` in all."""

    def __init__(
        self, model: LlamaModel, *, max_sessions: int = 1024, max_chars: int = 8_000_000
    ) -> None:
        self._model = model
        self._max_sessions = max_sessions
        self._max_chars = max_chars
        self._entries: OrderedDict[str, Tokenized] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    @property
    def sessions(self) -> frozenset[str]:
        """The sessions whose tokens are kept."""
        return frozenset(self._entries)

    def tokenize(
        self, session: str | None, text: str, *, add_special: bool, parse_special: bool
    ) -> Tokenized:
        """``text`` tokenized, reusing ``session``'s latest prompt for the text they share."""
        with self._lock:
            known = self._entries.get(session) if session is not None else None
        start, head = 0, array("i")
        cuts: list[tuple[int, int]] = [(0, 0)]
        if (
            known is not None
            and known.text
            and text
            and self._model.piecewise
            and (known.add_special, known.parse_special) == (add_special, parse_special)
        ):
            shared = _shared_prefix(known.text, text)
            # A cut before the last shared character: the characters on both sides of it are
            # the same in both texts, so it is a cut of the new text too.
            at = bisect.bisect_left(known.cuts, (shared, -1)) - 1
            if at >= 0:
                start, n_before = known.cuts[at]
                head = known.tokens[:n_before]
                cuts = list(known.cuts[: at + 1])
        tokens = array("i", head)
        rest = text[start:]
        parts = self._model.pieces(rest) if self._model.piecewise else iter([rest])
        offset = start
        for i, part in enumerate(parts):
            if i and offset > cuts[-1][0]:
                cuts.append((offset, len(tokens)))
            first = add_special and offset == 0
            tokens.extend(self._model.tokenize_whole(part, first, parse_special))
            offset += len(part)
        return Tokenized(text, tokens, tuple(cuts), add_special, parse_special)

    def remember(self, session: str | None, tokenized: Tokenized) -> None:
        """Keep ``tokenized`` as ``session``'s latest prompt."""
        if session is None or len(tokenized.text) > self._max_chars:
            return
        with self._lock:
            old = self._entries.pop(session, None)
            if old is not None:
                self._chars -= len(old.text)
            self._entries[session] = tokenized
            self._chars += len(tokenized.text)
            while self._chars > self._max_chars or len(self._entries) > self._max_sessions:
                _, dropped = self._entries.popitem(last=False)
                self._chars -= len(dropped.text)

    def forget(self, session: str) -> None:
        """Drop ``session``'s prompt (the session is gone)."""
        with self._lock:
            old = self._entries.pop(session, None)
            if old is not None:
                self._chars -= len(old.text)


def _shared_prefix(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share (comparisons run in C)."""
    if b.startswith(a):
        return len(a)
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low
