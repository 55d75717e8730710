"""Anthropic Messages request types (the subset the worker serves).

Fields the SDK may send that change nothing here (``thinking``, ``service_tier``, ``speed``,
``cache_control``, ``container``, ``diagnostics``, ``inference_geo``...) are accepted and
ignored, as are unknown ones; so are ``thinking`` blocks of earlier assistant turns."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gemma_worker.core.request import MAX_STOP_LENGTH, MAX_STOP_STRINGS
from gemma_worker.core.sampling import MAX_MESSAGES

_BODY = ConfigDict(extra="ignore")
_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class TextBlock(BaseModel):
    """``{"type": "text", "text": ...}``."""

    model_config = _BODY
    type: Literal["text"]
    text: str


class ImageBlock(BaseModel):
    """An image or document: refused (this model reads text only)."""

    model_config = _BODY
    type: Literal["image", "document"]


class ToolUseBlock(BaseModel):
    """A call an earlier assistant turn made."""

    model_config = _BODY
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(BaseModel):
    """The result of a call, in a user turn."""

    model_config = _BODY
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool = False


class ThinkingBlock(BaseModel):
    """An earlier turn's thinking, sent back by agents: ignored."""

    model_config = _BODY
    type: Literal["thinking", "redacted_thinking"]


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(BaseModel):
    """One turn: a string, or content blocks."""

    model_config = _BODY
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolParam(BaseModel):
    """A tool the model may call (client tools; server tools are refused by type)."""

    model_config = _BODY
    name: Annotated[str, Field(pattern=_TOOL_NAME)]
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    type: Literal["custom"] | None = None


class ToolChoice(BaseModel):
    """``auto``, ``any``, ``tool`` (with ``name``) or ``none``."""

    model_config = _BODY
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class JsonOutputFormat(BaseModel):
    """``output_config.format``: the answer is JSON valid against ``schema``."""

    model_config = _BODY
    type: Literal["json_schema"]
    schema_: Annotated[dict[str, Any], Field(alias="schema")]


class OutputConfig(BaseModel):
    """``output_config`` (``effort`` and the rest are ignored)."""

    model_config = _BODY
    format: JsonOutputFormat | None = None


class CountTokensRequest(BaseModel):
    """``POST /v1/messages/count_tokens``: what makes a prompt (no ``max_tokens``)."""

    model_config = _BODY
    model: str | None = None
    messages: Annotated[list[MessageParam], Field(max_length=MAX_MESSAGES)]
    system: str | list[TextBlock] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``: the prompt's fields, then the answer's."""

    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]],
            Field(max_length=MAX_STOP_STRINGS),
        ]
        | None
    ) = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
    stream: bool = False
