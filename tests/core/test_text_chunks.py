"""Where texts are cut for tokenizing, on plain data."""

from __future__ import annotations

import re

from gemma_worker.core.text_chunks import anchor_pattern, pieces

RUN_END = re.compile(
    r"(?<=\n)(?!\n)|(?<=\t)(?!\t)|(?<!\n)(?=\n)|(?<!\t)(?=\t)|(?<=  )(?! )|(?<! )(?=  )"
)


def test_pieces_join_back_and_are_cut_only_at_the_ends_of_runs() -> None:
    text = ("word \n\n  more\ttext\t\tand so on " * 100) + "end"
    parts = list(pieces(text, target=16))
    assert "".join(parts) == text
    assert all(parts)
    offset = 0
    for part in parts[:-1]:
        offset += len(part)
        assert len(part) >= 16
        assert RUN_END.match(text, offset), (offset, text[offset - 2 : offset + 2])


def test_no_cut_inside_a_run_or_before_a_word() -> None:
    assert list(pieces("a" * 1000, target=8)) == ["a" * 1000]
    for part in pieces("x\n\n\n\ny" * 50, target=4):
        assert not part.startswith("\n\n") or part.startswith("\n\n\n\n")


def test_anchors_are_cut_around_and_single_spaces_never() -> None:
    anchors = anchor_pattern(["<td>", "</td>", "  ", "\n"])  # whitespace runs: not anchors
    assert anchors is not None and anchors.pattern == "</td>|<td>"
    parts = list(pieces("<td>x</td>" * 50, target=5, anchors=anchors))
    assert "".join(parts) == "<td>x</td>" * 50
    assert all(p.startswith(("<td>", "x", "</td>")) for p in parts)
    assert list(pieces("a b " * 300, target=4)) == ["a b " * 300]


def test_a_short_text_is_one_piece() -> None:
    assert list(pieces("hello\nworld")) == ["hello\nworld"]
    assert list(pieces("")) == [""]
