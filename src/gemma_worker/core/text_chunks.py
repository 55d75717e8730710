"""Where a text may be cut so that tokenizing its pieces one by one gives the tokens of the
whole (sans-I/O).

Why: llama.cpp's tokenizer is quadratic in the number of whitespace-control pieces of one
call (``"a\\n"`` x 16,000 takes 2.2 s on 2 cores; its special-token partition walks a linked
list from its head for every match, ``std::distance(buffer.begin(), it)`` in
``tokenizer_st_partition``). Cut into pieces of a few hundred characters, the same text takes
milliseconds. A cut is made only at either end of a run of newlines or of tabs: no token of
a SentencePiece vocabulary such as Gemma's spans that point (newline and tab runs are tokens
of their own, and a word's leading space belongs to the word, which a cut never separates).
The engine checks this on each model it loads (:func:`probe_texts`) and tokenizes whole texts
where it does not hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

#: Characters a piece is aimed at (pieces run to the next cut point past it).
PIECE_CHARS = 256

#: Either end of a run of newlines or of tabs.
_CUT = re.compile(r"(?<=\n)(?!\n)|(?<=\t)(?!\t)|(?<!\n)(?=\n)|(?<!\t)(?=\t)")


def pieces(text: str, target: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in order, in non-empty pieces of ``target`` characters or more (the last may be
    shorter), cut only where tokens never span (see the module docstring); a text without
    such points is one piece."""
    start = 0
    for found in _CUT.finditer(text, target):
        cut = found.start()
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
    ]  # fmt: skip
    texts = ["".join(units), "".join(reversed(units))]
    texts += [u + v + u for u in units for v in ("\nword", "\tword", "\n\nWord", " word", " \n ")]
    return texts
