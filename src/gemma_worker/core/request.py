"""The generation request: one schema for ``POST /v1/execute`` and WebSocket messages."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.response_format import ResponseFormat

PromptFormat = Literal["auto", "plain", "chat"]

_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
_ID_RE = re.compile(_ID_PATTERN)

#: Upper bound on the number of stop strings, and on each one's length.
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


class GenerationRequest(BaseModel):
    """What a client asks for. Types are strict: ``"0.5"`` is not a temperature.

    Fields left out fall back to the worker's configured defaults.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    input: Annotated[str, Field(min_length=1, description="Prompt text (plain) or user message.")]
    max_tokens: Annotated[
        int | None, Field(default=None, gt=0, description="Most tokens to generate.")
    ] = None
    temperature: Annotated[
        float | None,
        Field(default=None, ge=0.0, le=5.0, allow_inf_nan=False, description="0 = greedy."),
    ] = None
    top_p: Annotated[
        float | None,
        Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus mass."),
    ] = None
    top_k: Annotated[
        int | None,
        Field(
            default=None,
            ge=0,
            le=1_000_000,
            description="0 = no top-k of the client's own; 0 or above 1000: 1000 (the "
            "worker's bound).",
        ),
    ] = None
    stop: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]] | None,
        Field(default=None, max_length=MAX_STOP_STRINGS, description="Stop strings."),
    ] = None
    seed: Annotated[
        int | None, Field(default=None, ge=0, le=2**32 - 2, description="Sampling seed.")
    ] = None
    session_id: Annotated[
        str | None,
        Field(
            default=None,
            pattern=_ID_PATTERN,
            description="Continue this session (an id from an earlier answer). Left out: the "
            "request starts a new session, whose id the answer carries.",
        ),
    ] = None
    system: Annotated[
        str | None,
        Field(
            default=None,
            min_length=1,
            description="System prompt of a new session (kept for all its turns).",
        ),
    ] = None
    request_id: Annotated[
        str | None,
        Field(default=None, pattern=_ID_PATTERN, description="Client-chosen request id."),
    ] = None
    prompt_format: Annotated[
        PromptFormat,
        Field(
            default="auto",
            description="plain completion, the model's chat template, or auto "
            "(chat template when the model has one and is instruction-tuned, else plain).",
        ),
    ] = "auto"
    stream: Annotated[
        bool, Field(default=False, description="REST only: answer with an ND-JSON stream.")
    ] = False
    response_format: Annotated[
        ResponseFormat | None,
        Field(
            default=None,
            description='OpenAI\'s shape: {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}; the answer '
            "is then constrained by a grammar to valid JSON (matching the schema).",
        ),
    ] = None

    new_session: Annotated[
        bool,
        Field(
            default=False,
            description="WebSocket: start a fresh session, which becomes the connection's "
            "current one (REST requests without session_id always start one).",
        ),
    ] = False
    stateless: Annotated[
        bool,
        Field(
            default=False,
            description="Answer without history and store nothing; the session event still "
            "carries an id, for correlation. A connection's current session is untouched.",
        ),
    ] = False

    @model_validator(mode="after")
    def _one_session_choice(self) -> GenerationRequest:
        chosen = [
            name
            for name, on in (
                ("session_id", self.session_id is not None),
                ("new_session", self.new_session),
                ("stateless", self.stateless),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} cannot be combined")
        return self

    @field_validator("input")
    @classmethod
    def _input_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must not be blank")
        return value


def new_id() -> str:
    """A fresh random id (UUID4, 122 random bits) for a request, session or error."""
    return str(uuid.uuid4())


def route_session(req: GenerationRequest, routed: str | None, where: str) -> GenerationRequest:
    """``req`` with the session a balancer routed it by (the ``X-Session-Id`` header, or the
    WebSocket's ``session_id`` query parameter, named by ``where``).

    A body that names no session takes the routed one; a body that names another one is
    refused (``INVALID_REQUEST``): it would run away from its session's replica and cache.
    """
    if routed is None or req.stateless:
        return req
    if req.new_session:
        raise WorkerError(
            ErrorCode.INVALID_REQUEST, f"new_session cannot be used when {where} is set"
        )
    if not is_valid_id(routed):
        raise WorkerError(ErrorCode.INVALID_REQUEST, f"{where} is not a valid session id")
    if req.session_id is None:
        return req.model_copy(update={"session_id": routed})
    if req.session_id != routed:
        raise WorkerError(
            ErrorCode.INVALID_REQUEST,
            f"the request names session {req.session_id} but {where} names {routed}",
        )
    return req


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is usable as a request or session id."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def describe_validation_error(exc: ValidationError) -> str:
    """A short, safe, human-readable summary of a pydantic validation error."""
    return describe_errors(exc.errors(include_url=False, include_input=False))


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """``field: message; ...`` for the first few validation errors (never the input values)."""
    parts: list[str] = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        message = str(err.get("msg")).removeprefix("Value error, ")  # pydantic's prefix
        parts.append(f"{loc}: {message}")
    return "; ".join(parts) or "invalid request"


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
    repeat_last_n: int = 64
    #: (token id, bias added to its logit) pairs; ``-inf`` bans the token.
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: When true, ``max_tokens`` is lowered to what the context leaves after the prompt instead
    #: of the request being refused (for a request that did not ask for a length).
    fit_context: bool = False


#: The most messages any chat request may carry, whatever the settings: the request types
#: declare it, so validation stops at once past it (not after 65,000 messages, on the event
#: loop). ``max_messages`` (a setting, at most this) is the limit in force.
MAX_MESSAGES = 16_384

#: The largest top-k sampled from: the candidates beyond the best thousand carry no mass
#: that top-p or temperature would leave them, and each one kept costs sampling time.
MAX_TOP_K = 1000


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

    def resolve(self, req: GenerationRequest) -> SamplingParams:
        """Apply defaults and check limits; raise ``INVALID_REQUEST`` when a limit is exceeded."""
        n_chars = len(req.input) + len(req.system or "")
        if n_chars > self.max_input_chars:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"input is {n_chars} characters; the limit is {self.max_input_chars}",
            )
        if req.max_tokens is not None and req.max_tokens > self.max_tokens_cap:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"max_tokens {req.max_tokens} is above the limit of {self.max_tokens_cap}",
            )
        max_tokens = req.max_tokens or min(self.default_max_tokens, self.max_tokens_cap)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature if req.temperature is None else req.temperature,
            top_p=self.top_p if req.top_p is None else req.top_p,
            top_k=self.cap_top_k(self.top_k if req.top_k is None else req.top_k),
            seed=req.seed,
            stop=tuple(req.stop or ()),
        )
