"""OpenAI request and response types (the subset the worker serves; unknown fields ignored)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gemma_worker.core.request import MAX_STOP_LENGTH, MAX_STOP_STRINGS
from gemma_worker.core.response_format import ResponseFormat
from gemma_worker.core.sampling import MAX_MESSAGES

_STRICT = ConfigDict(strict=True, extra="ignore")
_FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
_TOKEN_ID = re.compile(r"[0-9]{1,9}")

Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]


class TextPart(BaseModel):
    """A text part of a message's content (the only kind this model reads)."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


Content = str | list[Annotated[TextPart, Field(discriminator="type")]]


class SystemMessage(BaseModel):
    """``system`` or ``developer``: folded into the first user turn (Gemma has no system role)."""

    model_config = _STRICT
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(BaseModel):
    """A user turn."""

    model_config = _STRICT
    role: Literal["user"]
    content: Content
    name: str | None = None


class FunctionCall(BaseModel):
    """The function an assistant called and its arguments (a JSON string)."""

    model_config = _STRICT
    name: str
    arguments: str


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant turn."""

    model_config = _STRICT
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    """An earlier answer: text, tool calls, or both."""

    model_config = _STRICT
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallIn] | None = None
    name: str | None = None


class ToolMessage(BaseModel):
    """The result of a tool call, rendered into the prompt for the next turn."""

    model_config = _STRICT
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDef(BaseModel):
    """A function the model may call."""

    model_config = _STRICT
    name: Annotated[str, Field(pattern=_FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """``{"type": "function", "function": {...}}``."""

    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    """The function a named ``tool_choice`` forces."""

    model_config = _STRICT
    name: Annotated[str, Field(pattern=_FUNCTION_NAME)]


class NamedToolChoice(BaseModel):
    """``{"type": "function", "function": {"name": ...}}``."""

    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    """``stream_options``."""

    model_config = _STRICT
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields both completion endpoints share."""

    model_config = _STRICT
    model: str = ""
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0, allow_inf_nan=False)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = None
    top_k: Annotated[int | None, Field(ge=0, le=1_000_000)] = None
    min_p: Annotated[float | None, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = None
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)] = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not _TOKEN_ID.fullmatch(key):
                raise ValueError(f"keys must be token ids, not {key[:16]!r}")
        return value


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    logprobs: bool = False
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise ValueError("tool_choice names a function that is not in tools")
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        return self


class CompletionRequest(SamplingFields):
    """``POST /v1/completions`` (the legacy text completion)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: Annotated[int | None, Field(ge=1)] = 16
    logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("suffix (insertion) is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, value: int | None) -> int | None:
        if value not in {None, 1}:
            raise ValueError("only best_of=1 is supported")
        return value

    @property
    def text(self) -> str:
        """The prompt text."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ModelStatusBody(BaseModel):
    """A model's state, as llama-server's router reports it (``failed``: its last load
    failed, ``message`` says why)."""

    value: Literal["loaded", "loading", "unloaded"]
    failed: bool = False
    message: str | None = None


class ModelCard(BaseModel):
    """An entry of ``GET /v1/models``. ``file`` and ``size`` (bytes) only for admin keys."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    aliases: list[str] = Field(default_factory=list)
    default: bool = False
    status: ModelStatusBody | None = None
    #: What it serves, as Ollama names it: ``completion`` (chat, completions) and ``embedding``.
    capabilities: list[str] = Field(default_factory=lambda: ["completion", "embedding"])
    file: str | None = None
    size: int | None = None


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(BaseModel):
    """llama-server's ``POST /tokenize``."""

    model_config = _STRICT
    content: str
    model: str | None = None
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    """llama-server's ``POST /detokenize``."""

    model_config = _STRICT
    tokens: Annotated[list[int], Field(max_length=1_000_000)]
    model: str | None = None
