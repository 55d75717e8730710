"""Output grammars for llama.cpp's sampler, compiled off the decode loop (they only read the
immutable vocabulary), each with its Python walk for the token budget (:mod:`.budget`)."""

from __future__ import annotations

import functools
import logging
import weakref
from typing import Any, Protocol

import llama_cpp as lc

from gemma_worker.core.gbnf import GbnfError
from gemma_worker.core.gbnf_walk import GrammarWalk
from gemma_worker.engine.budget import Vocabulary, minimum_tokens

log = logging.getLogger(__name__)


class GrammarError(ValueError):
    """llama.cpp refused the grammar text."""


class Grammar:
    """A compiled grammar sampler waiting for its request. The sampler that runs the request
    takes it over (:meth:`take`); one never taken is freed when it is garbage-collected.

    ``walk`` follows the same grammar in Python to keep the answer within its token budget
    (``None``: it could not be analysed, and the answer is only constrained); ``min_tokens``
    is what its shortest answer takes."""

    def __init__(self, ptr: Any, walk: GrammarWalk | None = None, min_tokens: int = 0) -> None:
        self._ptr: Any = ptr
        self._finalizer = weakref.finalize(self, lc.llama_sampler_free, ptr)
        self.walk = walk
        self.min_tokens = min_tokens

    def take(self) -> Any:
        """The llama.cpp sampler; the caller now owns (and frees) it."""
        self._finalizer.detach()
        ptr, self._ptr = self._ptr, None
        if ptr is None:
            raise RuntimeError("grammar already taken")
        return ptr


class GrammarVocabulary(Vocabulary, Protocol):
    """A model's vocabulary: its llama.cpp handle and what the budget reads."""

    @property
    def vocab(self) -> Any:
        """The ``llama_vocab`` pointer."""


@functools.lru_cache(maxsize=32)
def _walk(gbnf: str) -> GrammarWalk | None:
    """The (shared, cached) walk of ``gbnf``; ``None`` if it cannot be analysed."""
    try:
        return GrammarWalk.parse(gbnf)
    except (GbnfError, RecursionError):
        log.warning("a grammar could not be analysed; its answers are not kept within budget")
        return None


def compile_grammar(
    model: GrammarVocabulary, gbnf: str, *, budget_tokens: int | None = None
) -> Grammar:
    """Parse ``gbnf`` (root rule ``root``) for ``model``'s vocabulary; :class:`GrammarError`
    if it is invalid. With ``budget_tokens`` (the most tokens any answer may have), the
    grammar is analysed for the token budget (:mod:`.budget`); without, it only constrains."""
    try:
        text = gbnf.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in a schema's strings
        raise GrammarError("the grammar is not valid Unicode") from exc
    walk, least = None, 0
    if budget_tokens is not None:
        walk = _walk(gbnf)
        if walk is not None:
            try:
                least = minimum_tokens(walk, model, budget_tokens)
            except (GbnfError, RecursionError):
                log.warning("a grammar's shortest answer could not be worked out")
                walk = None
    ptr = lc.llama_sampler_init_grammar(model.vocab, text, b"root")
    if not ptr:
        raise GrammarError("the grammar could not be compiled")
    return Grammar(ptr, walk, least)
