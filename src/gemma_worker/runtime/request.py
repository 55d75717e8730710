"""The neutral generation request: what every dialect parses its body into.

A dialect (native protocol, OpenAI, Ollama, ...) states what the client asked for here, and
its own default rules as data (:class:`~gemma_worker.core.sampling.LengthRule`);
:func:`gemma_worker.runtime.pipeline.start_generation` does the rest, the same for all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gemma_worker.core.conversation import Conversation
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.json_schema import ToolSpec
from gemma_worker.core.response_format import JsonObjectFormat, JsonSchemaFormat, TextFormat
from gemma_worker.core.sampling import SamplingRequest
from gemma_worker.runtime.registry import ModelSpec
from gemma_worker.sessions.service import TurnRequest

JsonFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


@dataclass(frozen=True, slots=True)
class ToolUse:
    """Functions the model may call: ``tools`` (only the forced one, when the client forced
    one), whether it must call one, and whether one answer may call several."""

    tools: tuple[ToolSpec, ...]
    required: bool = False
    parallel: bool = True
    forced: str | None = None


@dataclass(frozen=True, slots=True)
class Output:
    """What the answer must be: JSON (``format``) or tool calls (``tools``), constrained by a
    grammar; ``field`` is the request field that asked for it (errors name it)."""

    field: str
    format: JsonFormat | None = None
    tools: ToolUse | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: ``owner`` is the API key id (``None`` when keys are off) that sessions and
    cached prefixes belong to; ``identity`` is who the request counts against for rate limits
    and the fair share (the key id, else the client's address)."""

    owner: str | None
    identity: str
    #: The models the caller's key may use, by id or alias (``None``: any).
    models: frozenset[str] | None = None

    def may_use(self, model_id: str, aliases: tuple[str, ...] = ()) -> bool:
        """Whether the caller's key may use the model ``model_id`` (also known as
        ``aliases``)."""
        return self.models is None or not self.models.isdisjoint((model_id, *aliases))

    def check_may_use(self, spec: ModelSpec) -> None:
        """``FORBIDDEN`` naming ``model`` unless the caller's key may use ``spec``."""
        if not self.may_use(spec.id, spec.aliases):
            raise WorkerError(
                ErrorCode.FORBIDDEN, f"this API key may not use model '{spec.id}'", param="model"
            )


@dataclass(frozen=True, slots=True)
class RawPrompt:
    """Text the model continues as it is (no template); ``parse_special``: whether special
    tokens written in it (``<start_of_turn>``) are tokens, not text."""

    text: str
    parse_special: bool = False


#: A chat (rendered by the model's template), raw text, or a session's next turn (its history
#: read from the session store).
Input = Conversation | RawPrompt | TurnRequest


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation as any dialect asks for it.

    ``transport`` names the dialect (metrics, logs). ``trim_history``: leave out the oldest
    turns of a history that does not fit the context (else the request is refused).
    ``n_messages`` is the count of messages the client sent (their limit). ``model`` is the
    model the client named (``None``: the default, or a session's own).
    """

    input: Input
    sampling: SamplingRequest
    caller: Caller
    transport: str
    output: Output | None = None
    model: str | None = None
    #: How long the model stays loaded after this request (seconds, Ollama's ``keep_alive``;
    #: ``None``: the model's default).
    keep_alive: float | None = None
    #: Told when the model must be loaded first (a stream may say so to its client).
    on_loading: Callable[[ModelSpec], object] | None = None
    request_id: str | None = None
    top_logprobs: int | None = None
    trim_history: bool = False
    n_messages: int = 0
