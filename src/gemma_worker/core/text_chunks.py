"""Where a text may be cut so that tokenizing its pieces one by one gives the tokens of the
whole (sans-I/O).

Why: llama.cpp's tokenizer is quadratic in the number of user-defined tokens it finds in one
call (``"a\\n"`` x 16,000 takes 2.2 s on 2 cores; its special-token partition walks a linked
list from its head for every match, ``std::distance(buffer.begin(), it)`` in
``tokenizer_st_partition``). Gemma's vocabulary makes newline, tab and space runs and HTML
tags such tokens. Cut into pieces of a few hundred characters, the same text takes
milliseconds. A cut is made only where llama.cpp's partition splits the text anyway: at
either end of a run of newlines, of tabs, or of two or more spaces, and before and after a
user-defined token's text (``<td>``...: the ``anchors``). A word's leading space belongs to the
word, and a single space is never a cut. The engine checks this on each model it loads
(:func:`probe_texts`) and tokenizes whole texts where it does not hold.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator

#: Characters a piece is aimed at (pieces run to the next cut point past it).
PIECE_CHARS = 256

#: Either end of a run of newlines, of tabs, or of two or more spaces.
_RUN_ENDS = re.compile(
    r"(?<=\n)(?!\n)|(?<=\t)(?!\t)|(?<!\n)(?=\n)|(?<!\t)(?=\t)|(?<=  )(?! )|(?<! )(?=  )"
)


def anchor_pattern(texts: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern finding the token texts ``texts`` (longest first) that are not whitespace
    runs (those the run ends cover), or ``None`` if there are none."""
    kept = sorted({t for t in texts if t and t.strip(" \n\t")}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, kept))) if kept else None


def _cuts(text: str, anchors: re.Pattern[str] | None) -> Iterator[int]:
    runs = (m.start() for m in _RUN_ENDS.finditer(text))
    if anchors is None:
        yield from runs
        return
    found = (p for m in anchors.finditer(text) for p in (m.start(), m.end()))
    yield from heapq.merge(runs, found)


def pieces(
    text: str, target: int = PIECE_CHARS, anchors: re.Pattern[str] | None = None
) -> Iterator[str]:
    """``text`` in order, in non-empty pieces of ``target`` characters or more (the last may be
    shorter), cut only where tokens never span (see the module docstring); a text without
    such points is one piece."""
    start = 0
    for cut in _cuts(text, anchors):
        if cut - start >= target and cut < len(text):
            yield text[start:cut]
            start = cut
    yield text[start:]


def probe_texts() -> list[str]:
    """Texts that exercise every kind of cut (newline and tab runs before words, spaces,
    special-token spellings, non-ASCII): a vocabulary whose tokens of these, cut at every
    point, equal those of the whole is safe to tokenize in pieces."""
    units = [
        "a", "b ", " The", "\n", "\n\n", "\t", "  ", "\r\n", "é", "日本", "1.", "<start_of_turn>",
        "<end_of_turn>", "user\n", "<0x0A>", "\u00a0", "def f():\n\treturn", "\n- item", "\t\tx",
        "  x", "x   y", " <b>", "<td>x</td>", "</div> ", "a<start_of_image>b", "    ",
    ]  # fmt: skip
    texts = ["".join(units), "".join(reversed(units))]
    joins = ("\nword", "\tword", "\n\nWord", " word", " \n ", "  word", "<b>w", " </i>")
    texts += [u + v + u for u in units for v in joins]
    return texts
