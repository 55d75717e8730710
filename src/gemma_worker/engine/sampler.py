"""Per-request token sampling on llama.cpp: greedy or a seeded chain, logit bias, penalties, an
optional grammar (:mod:`.grammar`) with its token budget (:mod:`.budget`), and
log-probabilities. Runs on the engine thread."""

from __future__ import annotations

import ctypes
import logging
import math
import time
from typing import Any

import llama_cpp as lc
import numpy as np

from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine.budget import AnswerBudget, Step, Vocabulary
from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.messages import TokenLogprob, TopLogprob

log = logging.getLogger(__name__)

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(lc.llama_token_data)


class SamplingError(RuntimeError):
    """No token can be sampled (e.g. every token the grammar allows is banned by the logit
    bias); the request ends, the others go on."""


def _pre_chain(params: SamplingParams, n_vocab: int) -> Any:
    """Logit bias and penalties: what changes logits before any token is chosen (``None``
    when there is neither). It neither reorders nor drops candidates."""
    penalties = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    repeat = params.repeat_penalty != 1.0 and params.repeat_last_n != 0
    if not params.logit_bias and not penalties and not repeat:
        return None
    add = lc.llama_sampler_chain_add
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
    if repeat:
        # Ollama's and llama-server's repeat penalty: only the last repeat_last_n tokens.
        add(
            chain,
            lc.llama_sampler_init_penalties(
                n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0
            ),
        )
    return chain


def _pick_chain(params: SamplingParams) -> Any:
    """Top-k, top-p, min-p, temperature and a seeded draw (``None`` at temperature 0: argmax)."""
    if params.temperature <= 0.0:
        return None
    add = lc.llama_sampler_chain_add
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
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


#: How many of the best candidates have been checked against the grammar at each try, when the
#: picked token was rejected.
_GRAMMAR_BATCHES = (256, 4096, 32768)
#: When a token would not leave room to finish the answer: how many of the best candidates are
#: checked against the grammar, how many that fit are sampled among (at most), and how many of
#: all allowed tokens are tried when none of the best fit.
_BUDGET_BEST = 256
_BUDGET_PICKS = 40
_BUDGET_SCAN = 4096
_BUDGET_SEARCH_SECONDS = 0.02


class Sampler:
    """One request's sampler: logit bias and penalties (``pre``), then argmax at temperature 0
    (llama.cpp's greedy sampler first copies all 262k candidates; argmax is ~6x faster) or the
    seeded ``pick`` chain.

    With a grammar, the picked token is checked against the grammar alone first, as llama.cpp's
    common sampler does. Only when the grammar rejects it is the pick made again among the
    tokens the grammar allows, with the same result as filtering the whole 262k vocabulary
    (~25 ms here) but usually far cheaper: candidates are checked best first in batches, until
    top-k of them pass (at temperature 0, one), since top-k keeps only the best allowed tokens
    anyway, or until top-p's cut is sure to fall among those found. When no batch settles it,
    the pick is made among the allowed tokens found in the best 32,768 (the rest of the 262k
    carry no mass next to them: exact in all but name), so a step's cost stays bounded; only
    when none of those is allowed is the whole vocabulary filtered.
    """

    def __init__(
        self,
        params: SamplingParams,
        n_vocab: int,
        *,
        grammar: Grammar | None = None,
        piece: Any = None,
        top_logprobs: int | None = None,
        vocab: Vocabulary | None = None,
    ) -> None:
        self._n_vocab = n_vocab
        self._pre = _pre_chain(params, n_vocab)
        self._pick = _pick_chain(params)
        #: How many allowed candidates the pick needs to be exact (0: all of them).
        self._needed = 1 if self._pick is None else params.top_k
        self._top_p = params.top_p
        self._grammar = None if grammar is None else grammar.take()
        #: Keeps the grammar's answer within the tokens left (see :mod:`.budget`).
        self.budget = (
            AnswerBudget(grammar.walk, vocab)
            if grammar is not None and grammar.walk is not None and vocab is not None
            else None
        )
        self._piece = piece
        self._top_logprobs = top_logprobs
        self._cand: np.ndarray[Any, Any] | None = None
        self._ids: np.ndarray[Any, Any] | None = None
        self._single = (lc.llama_token_data * 1)()
        self._single_arr = lc.llama_token_data_array(self._single, 1, -1, False)

    def _logits(self, ctx: Any, index: int) -> np.ndarray[Any, Any]:
        return np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))

    def _candidates(self, logits: np.ndarray[Any, Any]) -> Any:
        """All tokens with their logits after ``pre``, as a ``llama_token_data_array`` (filled
        afresh: samplers reorder and shrink it)."""
        if self._cand is None or self._ids is None:
            self._cand = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = _as_array(cand)
        if self._pre is not None:
            lc.llama_sampler_apply(self._pre, ctypes.byref(arr))
        return arr

    def _choose(self, arr: Any, cand: np.ndarray[Any, Any]) -> int:
        """Run the pick (or argmax) over ``arr``, a view of ``cand``."""
        if self._pick is None:
            return int(cand["id"][int(cand["logit"][: arr.size].argmax())])
        lc.llama_sampler_apply(self._pick, ctypes.byref(arr))
        assert arr.selected >= 0
        return int(cand["id"][arr.selected])

    def _grammar_allows(self, token: int) -> bool:
        self._single[0].id = token  # type: ignore[assignment]
        self._single[0].logit = 1.0
        self._single[0].p = 0.0
        self._single_arr.size = 1
        self._single_arr.selected = -1
        lc.llama_sampler_apply(self._grammar, ctypes.byref(self._single_arr))
        return not math.isinf(self._single[0].logit)

    def _choose_allowed(self, logits: np.ndarray[Any, Any]) -> int:
        """The pick among the tokens the grammar allows (see the class docstring)."""
        arr = self._candidates(logits)
        assert self._cand is not None
        adjusted = self._cand["logit"].copy()
        if self._needed > 0 and self._n_vocab > _GRAMMAR_BATCHES[-1]:
            order = _best_first(adjusted, _GRAMMAR_BATCHES[-1])
            parts: list[np.ndarray[Any, Any]] = []
            start = 0
            for end in _GRAMMAR_BATCHES:
                parts.append(self._allowed(order[start:end], adjusted))
                start = end
                allowed = np.ascontiguousarray(np.concatenate(parts)[: self._needed])
                if len(allowed) == self._needed or (
                    len(allowed)
                    and self._nucleus_settled(allowed["logit"], adjusted[order[end - 1]])
                ):
                    return self._choose(_as_array(allowed), allowed)
            if len(allowed):
                # Bounded: the whole vocabulary is not filtered inside a step while the other
                # sequences wait. What lies beyond the best candidates checked carries no mass
                # next to the allowed ones found among them.
                return self._choose(_as_array(allowed), allowed)
        lc.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        if not np.isfinite(self._cand["logit"][: arr.size]).any():
            raise SamplingError("no token the grammar allows may be sampled")
        return self._choose(arr, self._cand)

    def _allowed(self, ids: np.ndarray[Any, Any], logits: np.ndarray[Any, Any]) -> Any:
        """Those of ``ids`` the grammar allows, in their order, as token data with their
        ``logits``."""
        batch = np.zeros(len(ids), dtype=_TOKEN_DATA)
        batch["id"] = ids
        batch["logit"] = logits[ids]
        lc.llama_sampler_apply(self._grammar, ctypes.byref(_as_array(batch)))
        return batch[~np.isinf(batch["logit"])]

    def _nucleus_settled(self, found: np.ndarray[Any, Any], floor: float) -> bool:
        """Whether top-p keeps the same tokens among the ``found`` allowed ones (best first)
        whatever the unchecked allowed tokens are: at most ``top_k - len(found)`` of them get
        into top-k, each with a logit of at most ``floor``. Then they cannot be picked, and
        picking among ``found`` alone is exact."""
        if self._top_p >= 1.0:
            return False
        weights = np.exp(found.astype(np.float64) - float(found[0]))
        known = float(weights.sum())
        unseen = (self._needed - len(found)) * math.exp(floor - float(found[0]))
        cum = np.cumsum(weights)
        low = int(np.searchsorted(cum, self._top_p * known))
        high = int(np.searchsorted(cum, self._top_p * (known + unseen)))
        return high < len(found) and low == high

    def sample(self, ctx: Any, index: int, room: int | None = None) -> int:
        """Sample (and accept) a token from the logits at batch ``index``; ``room`` is how
        many tokens the request may still generate, this one included (``None``: no limit)."""
        logits = self._logits(ctx, index)
        if self._pre is None and self._pick is None:
            token = int(logits.argmax())
        else:
            arr = self._candidates(logits)
            assert self._cand is not None
            token = self._choose(arr, self._cand)
        if self._grammar is not None:
            if not self._grammar_allows(token):
                token = self._choose_allowed(logits)
                if not self._grammar_allows(token):  # accepting it would abort the process
                    raise SamplingError("the sampled token breaks the grammar")
            if self.budget is not None and room is not None and not self.budget.broken:
                try:
                    token = self._keep_budget(token, logits, room)
                except Exception:  # the budget is a help: never the end of a request
                    log.exception("the token budget failed; off for this answer")
                    self.budget.broken = True
            lc.llama_sampler_accept(self._grammar, token)
        if self._pre is not None:
            lc.llama_sampler_accept(self._pre, token)
        return token

    def _keep_budget(self, token: int, logits: np.ndarray[Any, Any], room: int) -> int:
        """``token``, or the pick among the allowed tokens that leave the answer completable
        within ``room`` (see :mod:`.budget`)."""
        budget = self.budget
        assert budget is not None
        step = budget.check(token, room)
        if step is not None:
            budget.take(step, room, steered=False)
            return token
        if budget.broken:
            return token
        step = self._choose_within(logits, room)
        if step is None:  # nothing fits (a budget below the grammar's minimum): as before
            budget.pass_over(token, room)
            return token
        if not self._grammar_allows(step.token):  # the walk and llama.cpp disagree
            log.warning("a budget pick is not allowed by the grammar; budget off for this answer")
            budget.broken = True
            return token
        budget.take(step, room, steered=step.token != token)
        return step.token

    def _choose_within(self, logits: np.ndarray[Any, Any], room: int) -> Step | None:
        """The pick among the best allowed tokens that keep the budget (the plan's next token
        always does); only when none of the best does, among all allowed tokens."""
        budget = self.budget
        assert budget is not None and self._grammar is not None
        arr = self._candidates(logits)
        assert self._cand is not None
        adjusted = self._cand["logit"].copy()
        want = max(1, min(self._needed or _BUDGET_PICKS, _BUDGET_PICKS))
        best = _best_first(adjusted, min(_BUDGET_BEST, self._n_vocab - 1))
        steps = self._steps(self._allowed(best, adjusted)["id"], room, want)
        fallback = budget.fallback(room)
        if (
            fallback is not None
            and np.isfinite(adjusted[fallback.token])  # not banned by a logit bias
            and all(s.token != fallback.token for s in steps)
        ):
            steps.append(fallback)
        if not steps:
            lc.llama_sampler_apply(self._grammar, ctypes.byref(arr))
            live = self._cand[: arr.size]
            live = live[np.isfinite(live["logit"])]
            live = live[np.argsort(-live["logit"], kind="stable")][:_BUDGET_SCAN]
            steps = self._steps(live["id"], room, want)
        if not steps:
            return None
        pool = np.zeros(len(steps), dtype=_TOKEN_DATA)
        pool["id"] = [s.token for s in steps]
        pool["logit"] = adjusted[pool["id"]]
        chosen = self._choose(_as_array(pool), pool)
        return next(s for s in steps if s.token == chosen)

    def _steps(self, tokens: np.ndarray[Any, Any], room: int, want: int) -> list[Step]:
        """Up to ``want`` of ``tokens`` (best first) that keep the budget, as steps; the
        search gives up after :data:`_BUDGET_SEARCH_SECONDS` (a grammar with hundreds of live
        stacks makes each check costly), with what it found."""
        budget = self.budget
        assert budget is not None
        steps: list[Step] = []
        deadline = time.perf_counter() + _BUDGET_SEARCH_SECONDS
        for token in tokens.tolist():
            step = budget.check(int(token), room)
            if budget.broken:
                return []
            if step is not None:
                steps.append(step)
                if len(steps) >= want:
                    break
            if time.perf_counter() > deadline:
                break
        return steps

    @property
    def ends_answer(self) -> bool:
        """Whether the grammar's answer is complete and ends with the token just sampled
        (see :meth:`.budget.AnswerBudget.ends_answer`)."""
        return self.budget is not None and self.budget.ends_answer()

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
        """Release the chains and the grammar."""
        for chain in (self._pre, self._pick, self._grammar):
            if chain is not None:
                lc.llama_sampler_free(chain)
        self._pre = self._pick = self._grammar = None


def _best_first(logits: np.ndarray[Any, Any], n: int) -> np.ndarray[Any, Any]:
    """The ids of the ``n`` (fewer than all) highest ``logits``, best first."""
    order = np.argpartition(-logits, n)[:n]
    return order[np.argsort(-logits[order], kind="stable")]


def _as_array(cand: np.ndarray[Any, Any]) -> Any:
    """A ``llama_token_data_array`` over a contiguous ``_TOKEN_DATA`` array (no copy)."""
    data = cand.ctypes.data_as(ctypes.POINTER(lc.llama_token_data))
    return lc.llama_token_data_array(data, len(cand), -1, False)
