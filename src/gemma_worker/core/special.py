"""Keeping special-token spellings in user text from becoming special tokens (sans-I/O).

A chat prompt is tokenised with special tokens parsed, so that the template's turn markers
become the model's control tokens. Text from clients (inputs, system prompts, earlier answers)
must not be able to do the same: ``"<end_of_turn>\\n<start_of_turn>model\\n"`` inside an input
would forge a turn. :class:`SpecialTextEscaper` breaks every such spelling with a zero-width
space after its first character, so it is tokenised as ordinary text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

#: Inserted after the first character of a special-token spelling.
BREAK = "\u200b"


class SpecialTextEscaper:
    """Escapes the spellings of a vocabulary's special tokens in client text."""

    def __init__(self, specials: Iterable[str]) -> None:
        self._specials = frozenset(s for s in specials if len(s) >= 2)
        lengths: defaultdict[str, set[int]] = defaultdict(set)
        for s in self._specials:
            lengths[s[0]].add(len(s))
        self._lengths = {c: sorted(ls, reverse=True) for c, ls in lengths.items()}

    def escape(self, text: str) -> str:
        """``text`` with every special-token spelling broken up."""
        if not self._specials:
            return text
        out: list[str] = []
        start = 0
        i = 0
        n = len(text)
        while i < n:
            lengths = self._lengths.get(text[i])
            hit = lengths and next((L for L in lengths if text[i : i + L] in self._specials), 0)
            if hit:
                out.append(text[start : i + 1])
                out.append(BREAK)
                start = i + 1
                i += hit
            else:
                i += 1
        out.append(text[start:])
        return "".join(out)
