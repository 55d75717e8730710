"""From what a client asked for to the sampling parameters one generation runs with.

Every dialect parses its body into a :class:`SamplingRequest`: the values the client gave
(``None``: not given) and its dialect's rule for an unset length (:class:`LengthRule`), as
data. :meth:`RequestLimits.resolve` is the one place that applies the worker's defaults and
limits to it, for every API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gemma_worker.core.errors import ErrorCode, WorkerError

#: The most messages any chat request may carry, whatever the settings: the request types
#: declare it, so validation stops at once past it (not after 65,000 messages, on the event
#: loop). ``max_messages`` (a setting, at most this) is the limit in force.
MAX_MESSAGES = 16_384

#: The largest top-k sampled from: the candidates beyond the best thousand carry no mass
#: that top-p or temperature would leave them, and each one kept costs sampling time.
MAX_TOP_K = 1000

#: llama.cpp's default window of the repetition penalty.
REPEAT_LAST_N = 64


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Resolved sampling parameters for one generation (defaults applied, limits checked)."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: llama.cpp's repetition penalty over the last ``repeat_last_n`` tokens (1.0: off).
    repeat_penalty: float = 1.0
    repeat_last_n: int = REPEAT_LAST_N
    #: (token id, bias added to its logit) pairs; ``-inf`` bans the token.
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: When true, ``max_tokens`` is lowered to what the context leaves after the prompt instead
    #: of the request being refused (for a request that did not ask for a length).
    fit_context: bool = False


@dataclass(frozen=True, slots=True)
class LengthRule:
    """A dialect's rule for the answer's length. ``param`` is what the client calls it (errors
    name it). An unset length is the worker's ``default_max_tokens`` (``"default"``) or as
    much as the context leaves (``"context"``); ``fit`` says whether an unset default shrinks
    to the room the prompt leaves instead of the request being refused."""

    param: str = "max_tokens"
    unset: Literal["default", "context"] = "default"
    fit: bool = False


@dataclass(frozen=True, slots=True)
class SamplingRequest:
    """What a client asked of sampling, before defaults: ``None`` means "not given".

    ``until_full`` asks for tokens until the context is full (Ollama's negative
    ``num_predict``). ``seed``: any integer (taken modulo 2³²-1); ``None``: a random one.
    ``logit_bias`` values at or below -100 ban their token (OpenAI's rule).
    ``context_tokens``: the context size the client wants (more than the worker has is an
    error; Ollama's ``num_ctx``).
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    until_full: bool = False
    context_tokens: int | None = None
    length: LengthRule = LengthRule()


def _invalid(param: str, message: str) -> WorkerError:
    return WorkerError(ErrorCode.INVALID_REQUEST, f"{param}: {message}", param=param)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Worker-wide limits and defaults that a request is checked against."""

    max_tokens_cap: int
    default_max_tokens: int
    max_input_chars: int
    temperature: float
    top_p: float
    top_k: int
    max_messages: int = 2048
    max_top_k: int = MAX_TOP_K

    def check_chars(self, n_chars: int, n_messages: int = 0) -> None:
        """``INVALID_REQUEST`` when a prompt of ``n_chars`` characters (over ``n_messages``
        messages) is over the limits: checked before any costly step (rendering, tokenizing)."""
        if n_messages > self.max_messages:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"the request has {n_messages} messages; the limit is {self.max_messages}",
                param="messages",
            )
        if n_chars > self.max_input_chars:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"the prompt is {n_chars} characters; the limit is {self.max_input_chars}",
            )

    def cap_top_k(self, top_k: int) -> int:
        """``top_k`` within the worker's bound; 0 ("off") is the bound too: sampling from the
        whole 262k vocabulary costs every step and changes nothing a client could notice."""
        return self.max_top_k if top_k <= 0 else min(top_k, self.max_top_k)

    def resolve(self, req: SamplingRequest, *, n_ctx: int, n_vocab: int) -> SamplingParams:
        """The parameters ``req`` runs with, for a model of ``n_ctx`` tokens of context and
        ``n_vocab`` tokens; ``INVALID_REQUEST`` naming the field when a limit is exceeded."""
        rule = req.length
        if req.context_tokens is not None and req.context_tokens > n_ctx:
            raise _invalid(
                "num_ctx",
                f"{req.context_tokens} is above this worker's context of {n_ctx} tokens",
            )
        if req.max_tokens is not None and req.max_tokens > self.max_tokens_cap:
            raise _invalid(
                rule.param, f"{req.max_tokens} is above the limit of {self.max_tokens_cap}"
            )
        if req.until_full or (req.max_tokens is None and rule.unset == "context"):
            max_tokens, fit = self.max_tokens_cap, True
        elif req.max_tokens is None:
            max_tokens, fit = min(self.default_max_tokens, self.max_tokens_cap), rule.fit
        else:
            max_tokens, fit = req.max_tokens, False
        bias: list[tuple[int, float]] = []
        for token, value in req.logit_bias:
            if not 0 <= token < n_vocab:
                raise _invalid("logit_bias", f"token id {token} is not in the vocabulary")
            bias.append((token, float("-inf") if value <= -100 else value))
        last_n = REPEAT_LAST_N if req.repeat_last_n is None else req.repeat_last_n
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature if req.temperature is None else req.temperature,
            top_p=self.top_p if req.top_p is None else req.top_p,
            top_k=self.cap_top_k(self.top_k if req.top_k is None else req.top_k),
            seed=None if req.seed is None else req.seed % (2**32 - 1),
            stop=req.stop,
            min_p=req.min_p or 0.0,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repeat_penalty=1.0 if req.repeat_penalty is None else req.repeat_penalty,
            repeat_last_n=n_ctx if last_n < 0 else last_n,
            logit_bias=tuple(bias),
            fit_context=fit,
        )
