"""Per-request token sampling on llama.cpp: greedy or a seeded chain, logit bias, penalties, an
optional grammar, and log-probabilities. Runs on the engine thread, except
:func:`compile_grammar`, which only reads the (immutable) vocabulary."""

from __future__ import annotations

import ctypes
import math
import weakref
from typing import Any

import llama_cpp as lc
import numpy as np

from gemma_worker.core.request import SamplingParams
from gemma_worker.engine.messages import TokenLogprob, TopLogprob

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(lc.llama_token_data)


class GrammarError(ValueError):
    """llama.cpp refused the grammar text."""


class Grammar:
    """A compiled grammar sampler waiting for its request. The sampler that runs the request
    takes it over (:meth:`take`); one never taken is freed when it is garbage-collected."""

    def __init__(self, ptr: Any) -> None:
        self._ptr: Any = ptr
        self._finalizer = weakref.finalize(self, lc.llama_sampler_free, ptr)

    def take(self) -> Any:
        """The llama.cpp sampler; the caller now owns (and frees) it."""
        self._finalizer.detach()
        ptr, self._ptr = self._ptr, None
        if ptr is None:
            raise RuntimeError("grammar already taken")
        return ptr


def compile_grammar(vocab: Any, gbnf: str) -> Grammar:
    """Parse ``gbnf`` (root rule ``root``) for ``vocab``; :class:`GrammarError` if it is invalid."""
    ptr = lc.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not ptr:
        raise GrammarError("the grammar could not be compiled")
    return Grammar(ptr)


def _chain(params: SamplingParams, n_vocab: int) -> Any:
    """The llama.cpp chain for ``params``, or ``None`` when plain argmax is the same thing."""
    add = lc.llama_sampler_chain_add
    greedy = params.temperature <= 0.0
    penalties = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    if greedy and not params.logit_bias and not penalties:
        return None
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    if params.logit_bias:
        biases = (lc.llama_logit_bias * len(params.logit_bias))()
        for i, (token, bias) in enumerate(params.logit_bias):
            biases[i].token = token  # type: ignore[assignment]
            biases[i].bias = bias
        add(chain, lc.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
    if penalties:
        # OpenAI's penalties count every token generated so far.
        add(
            chain,
            lc.llama_sampler_init_penalties(
                n_vocab,
                max(params.max_tokens, 64),
                1.0,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    if greedy:
        add(chain, lc.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(chain, lc.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, lc.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, lc.llama_sampler_init_temp(params.temperature))
    seed = lc.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
    add(chain, lc.llama_sampler_init_dist(seed))
    return chain


class Sampler:
    """One request's sampler.

    Without a grammar: argmax at temperature 0 (llama.cpp's greedy sampler first copies all
    262k candidates; argmax is ~6x faster), else the chain. With a grammar, the token the chain
    picks is checked against the grammar alone first; only when the grammar rejects it are all
    candidates filtered by the grammar and the chain run again (what llama.cpp's common sampler
    does: checking the whole 262k vocabulary every step is slow).
    """

    def __init__(
        self,
        params: SamplingParams,
        n_vocab: int,
        *,
        grammar: Grammar | None = None,
        piece: Any = None,
        top_logprobs: int | None = None,
    ) -> None:
        self._n_vocab = n_vocab
        self._chain = _chain(params, n_vocab)
        self._grammar = None if grammar is None else grammar.take()
        self._piece = piece
        self._top_logprobs = top_logprobs
        self._cand: np.ndarray[Any, Any] | None = None
        self._ids: np.ndarray[Any, Any] | None = None
        self._single = (lc.llama_token_data * 1)()
        self._single_arr = lc.llama_token_data_array(self._single, 1, -1, False)

    def _logits(self, ctx: Any, index: int) -> np.ndarray[Any, Any]:
        return np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))

    def _candidates(self, logits: np.ndarray[Any, Any]) -> Any:
        """All tokens as a ``llama_token_data_array`` (filled afresh: samplers reorder it)."""
        if self._cand is None or self._ids is None:
            self._cand = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        cand["p"] = 0.0
        data = cand.ctypes.data_as(ctypes.POINTER(lc.llama_token_data))
        return lc.llama_token_data_array(data, self._n_vocab, -1, False)

    def _run_chain(self, logits: np.ndarray[Any, Any], grammar_first: bool) -> int:
        arr = self._candidates(logits)
        if grammar_first:
            lc.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        lc.llama_sampler_apply(self._chain, ctypes.byref(arr))
        assert self._cand is not None and arr.selected >= 0
        return int(self._cand["id"][arr.selected])

    def _grammar_allows(self, token: int) -> bool:
        self._single[0].id = token  # type: ignore[assignment]
        self._single[0].logit = 1.0
        self._single[0].p = 0.0
        self._single_arr.size = 1
        self._single_arr.selected = -1
        lc.llama_sampler_apply(self._grammar, ctypes.byref(self._single_arr))
        return not math.isinf(self._single[0].logit)

    def sample(self, ctx: Any, index: int) -> int:
        """Sample (and accept) a token from the logits at batch ``index``."""
        logits = self._logits(ctx, index)
        if self._chain is None and self._grammar is None:
            return int(logits.argmax())
        token = int(logits.argmax()) if self._chain is None else self._run_chain(logits, False)
        if self._grammar is not None and not self._grammar_allows(token):
            if self._chain is None:
                arr = self._candidates(logits)
                lc.llama_sampler_apply(self._grammar, ctypes.byref(arr))
                assert self._cand is not None
                token = int(self._cand["id"][int(self._cand["logit"].argmax())])
            else:
                token = self._run_chain(logits, True)
        if self._chain is not None:
            lc.llama_sampler_accept(self._chain, token)
        if self._grammar is not None:
            lc.llama_sampler_accept(self._grammar, token)
        return token

    def logprob(self, ctx: Any, index: int, token: int) -> TokenLogprob | None:
        """``token``'s log-probability and the top alternatives (``None`` when not asked for)."""
        if self._top_logprobs is None:
            return None
        logits = self._logits(ctx, index).astype(np.float64)
        peak = float(logits.max())
        lse = peak + math.log(float(np.exp(logits - peak).sum()))
        top: tuple[TopLogprob, ...] = ()
        n = self._top_logprobs
        if n > 0:
            best = np.argpartition(-logits, n)[:n]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple(self._entry(int(t), float(logits[t]) - lse) for t in best)
        chosen = self._entry(token, float(logits[token]) - lse)
        return TokenLogprob(chosen.token, chosen.logprob, chosen.bytes, top)

    def _entry(self, token: int, logprob: float) -> TopLogprob:
        data: bytes = self._piece(token)
        return TopLogprob(data.decode("utf-8", "replace"), max(logprob, -9999.0), data)

    def free(self) -> None:
        """Release the chain and the grammar."""
        if self._chain is not None:
            lc.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            lc.llama_sampler_free(self._grammar)
            self._grammar = None
