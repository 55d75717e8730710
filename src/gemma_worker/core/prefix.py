"""Which cached tokens a new prompt can reuse (sans-I/O).

A session's KV cache holds the tokens its last turn saw: prompt and answer. The next turn's
prompt is rendered as text from the stored history, and re-tokenising that text need not give
the same tokens the model generated. So the match is made on text: the longest run of cached
tokens whose bytes spell the start of the new prompt is kept, and only the rest of the prompt is
tokenised and processed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """``n_tokens`` cached tokens are reusable; they spell the first ``n_bytes`` of the text."""

    n_tokens: int
    n_bytes: int


def _is_continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


def match_prefix(
    cached: Sequence[int],
    head: Sequence[int],
    text: bytes,
    piece: Callable[[int], bytes],
    reusable: Callable[[int], bool],
    *,
    boundaries: Collection[int] | None = None,
) -> PrefixMatch:
    """The longest reusable prefix of ``cached`` for a prompt of ``head`` tokens then ``text``.

    ``head`` holds the tokens the tokenizer puts before the text (BOS); the cache must start with
    them. ``piece`` gives a token's bytes; tokens for which ``reusable`` is false (e.g. control
    tokens when the prompt's text may not contain special tokens) end the match. The match never
    ends inside a UTF-8 character, so the rest of ``text`` can be tokenised on its own; given
    ``boundaries`` (byte offsets in ``text`` where the prompt's own tokenisation has a token
    boundary), it also ends only at one of them, so it never cuts a token of the prompt, such
    as a special token's spelling, in two.
    """
    n_head = len(head)
    if len(cached) < n_head or list(cached[:n_head]) != list(head):
        return PrefixMatch(0, 0)
    offset = 0
    ends = [0]  # ends[i]: bytes covered by the first i tokens after the head
    for token in cached[n_head:]:
        if not reusable(token):
            break
        data = piece(token)
        if not data or not text.startswith(data, offset):
            break
        offset += len(data)
        ends.append(offset)
    n = len(ends) - 1
    while n > 0 and not _can_end(ends[n], text, boundaries):
        n -= 1
    return PrefixMatch(n_head + n, ends[n])


def _can_end(offset: int, text: bytes, boundaries: Collection[int] | None) -> bool:
    if offset < len(text) and _is_continuation(text[offset]):
        return False
    return boundaries is None or offset in boundaries or offset == len(text)


def token_boundaries(
    tokens: Sequence[int], n_head: int, piece: Callable[[int], bytes]
) -> dict[int, int]:
    """Byte offsets (in the text after the ``n_head`` head tokens) where ``tokens`` break, each
    with how many of ``tokens`` (the head included) come before it."""
    offsets = {0: n_head}
    offset = 0
    for i, token in enumerate(tokens[n_head:], start=n_head + 1):
        offset += len(piece(token))
        offsets[offset] = i
    return offsets


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]: halve (slices compare in C)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
