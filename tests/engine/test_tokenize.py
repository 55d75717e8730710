"""Tokenizing in pieces, and a session's turn reusing its previous prompt's tokens, on the
real model's vocabulary: always the tokens of the whole text."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from gemma_worker.core.text_chunks import PIECE_CHARS
from gemma_worker.engine.llama import LlamaModel
from gemma_worker.engine.prompt_tokens import SessionTokens

UNITS = [
    *"ab ", "\n", "\n\n", "\t", "  ", "\r\n", "é", "日本", "1.", " The", "<start_of_turn>",
    "<end_of_turn>", "user\n", "\u00a0", "\n\t", " \n", "   ", "<b>", "</td>", "<td>", "x<",
    "[multimodal]", "<start_of_image>", " <i>",
]  # fmt: skip


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(UNITS) for _ in range(n))


def test_the_embedded_vocabulary_is_tokenized_in_pieces(model: LlamaModel) -> None:
    assert model.piecewise


@pytest.mark.parametrize("parse_special", [False, True])
def test_pieces_give_the_tokens_of_the_whole(model: LlamaModel, parse_special: bool) -> None:
    rng = random.Random(7)
    for _ in range(60):
        text = random_text(rng, rng.randint(200, 900))
        whole = model.tokenize_whole(text, True, parse_special)
        assert model.tokenize(text, add_special=True, parse_special=parse_special) == whole


def test_tokenizing_is_linear_in_newline_runs(model: LlamaModel) -> None:
    def seconds(unit: str, n: int) -> float:
        started = time.perf_counter()
        model.tokenize(unit * n, add_special=True, parse_special=False)
        return time.perf_counter() - started

    for unit in ("a\n\n", "a  ", "<b>", "a<td>", "\n\t"):
        small, large = seconds(unit, 4000), seconds(unit, 32000)  # "a\n\n" took 3.5 s
        assert large < 1.0, unit
        assert large < 20 * max(small, 1e-3), unit  # 8x the text: far from 64x


class CountingModel:
    """The model, counting the characters it is asked to tokenize."""

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self.chars = 0
        self.piecewise = model.piecewise

    def pieces(self, text: str) -> Iterator[str]:
        return self.model.pieces(text)

    def tokenize_whole(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        self.chars += len(text)
        return self.model.tokenize_whole(text, add_special, parse_special)


def test_a_sessions_next_turn_tokenizes_its_new_text_only(model: LlamaModel) -> None:
    counting = CountingModel(model)
    cache = SessionTokens(counting)  # type: ignore[arg-type]
    rng = random.Random(3)
    text = "<start_of_turn>user\n" + random_text(rng, 400)
    added = ""
    for turn in range(6):
        counting.chars = 0
        got = cache.tokenize("s1", text, add_special=True, parse_special=True)
        assert got.tokens.tolist() == model.tokenize_whole(text, True, True), turn
        if turn:
            assert counting.chars < len(added) + 2 * PIECE_CHARS  # not the history again
        cache.remember("s1", got)
        added = random_text(rng, 200) + "<end_of_turn>\n<start_of_turn>model\n"
        text += added


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("abc\nxyz" * 200, "abc\nxyz" * 150 + "abc\n\nfoo"),  # diverges inside a newline run
        ("x\tq " * 300, "x\tq " * 299 + "x\t\tq"),
        ("hello world\n" * 100, "hello world\n" * 100),  # the same text
        ("hello world\n" * 100, "other text entirely\n" * 50),
    ],
)
def test_a_changed_text_still_gets_its_own_tokens(
    model: LlamaModel, first: str, second: str
) -> None:
    cache = SessionTokens(model)
    cache.remember("s", cache.tokenize("s", first, add_special=True, parse_special=False))
    got = cache.tokenize("s", second, add_special=True, parse_special=False)
    assert got.tokens.tolist() == model.tokenize_whole(second, True, False)


def test_the_cache_is_bounded_and_forgets(model: LlamaModel) -> None:
    cache = SessionTokens(model, max_sessions=2, max_chars=10_000)
    for s in ("a", "b", "c"):
        cache.remember(s, cache.tokenize(s, s * 100, add_special=True, parse_special=False))
    assert cache.sessions == {"b", "c"}
    cache.forget("b")
    assert cache.sessions == {"c"}
