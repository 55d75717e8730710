"""The generation request: one schema for ``POST /v1/execute`` and WebSocket messages."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gemma_worker.core.conversation import PromptFormat
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.response_format import ResponseFormat
from gemma_worker.core.sampling import SamplingRequest

_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
_ID_RE = re.compile(_ID_PATTERN)

#: Upper bound on the number of stop strings, and on each one's length.
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


class ExecuteRequest(BaseModel):
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
    model: Annotated[
        str | None,
        Field(
            default=None,
            max_length=200,
            description="The model to answer (an id, alias or name:tag of GET /v1/models). "
            "Left out: the session's model, else the default one.",
        ),
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
    def _one_session_choice(self) -> ExecuteRequest:
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

    def sampling(self) -> SamplingRequest:
        """What this request asks of sampling (an unset length: the worker's default)."""
        return SamplingRequest(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(self.stop or ()),
        )

    @field_validator("input")
    @classmethod
    def _input_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must not be blank")
        return value


def route_session(req: ExecuteRequest, routed: str | None, where: str) -> ExecuteRequest:
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
