"""Ollama request types (the subset the worker serves; unknown fields are ignored)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gemma_worker.api.openai.types import Tool
from gemma_worker.core.request import MAX_STOP_LENGTH, MAX_STOP_STRINGS
from gemma_worker.core.sampling import MAX_MESSAGES

_STRICT = ConfigDict(strict=True, extra="ignore")

Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]


class Options(BaseModel):
    """``options``: the sampling and context parameters the worker honours. Others (``num_gpu``,
    ``num_thread``, ...) belong to how Ollama loads a model and are ignored."""

    model_config = _STRICT
    temperature: Annotated[float | None, Field(ge=0.0, le=5.0, allow_inf_nan=False)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = None
    top_k: Annotated[int | None, Field(ge=0, le=1_000_000)] = None
    min_p: Annotated[float | None, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = None
    num_predict: Annotated[int | None, Field(ge=-2)] = None
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: int | None = None
    repeat_penalty: Annotated[float | None, Field(gt=0.0, le=10.0, allow_inf_nan=False)] = None
    repeat_last_n: Annotated[int | None, Field(ge=-1, le=1_000_000)] = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)] = 0.0
    num_ctx: Annotated[int | None, Field(ge=1)] = None

    @property
    def stops(self) -> tuple[str, ...]:
        """``stop`` as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


#: ``format``: free text (``""`` or absent), any JSON object (``"json"``), or a JSON schema.
Format = Literal["", "json"] | dict[str, Any] | None


def _unsupported(what: str, value: object) -> None:
    if value:
        raise ValueError(f"{what} is not supported by this worker")


class _Generating(BaseModel):
    """Fields both generation routes share."""

    model_config = _STRICT
    model: str = ""
    format: Format = None
    options: Options | None = None
    stream: bool = True
    keep_alive: float | str | None = Field(
        default=None,
        description="How long the model stays loaded after this request: a duration ('5m'), "
        "seconds, 0 (unload after the answer) or -1 (keep it loaded).",
    )
    think: bool | str | None = None

    @field_validator("think")
    @classmethod
    def _no_thinking(cls, value: bool | str | None) -> bool | str | None:
        _unsupported("think (a thinking model)", value)
        return value


class GenerateRequest(_Generating):
    """``POST /api/generate``."""

    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    images: list[str] | None = None
    template: str | None = None
    context: list[int] | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        _unsupported("suffix (fill-in-the-middle)", value)
        return value

    @field_validator("images")
    @classmethod
    def _no_images(cls, value: list[str] | None) -> list[str] | None:
        _unsupported("images (this model reads text only)", value)
        return value

    @field_validator("template")
    @classmethod
    def _no_template(cls, value: str | None) -> str | None:
        _unsupported("template (the model's own template is used)", value)
        return value


class FunctionCall(BaseModel):
    """A call an assistant made: its arguments are a JSON object (a string in OpenAI's API)."""

    model_config = _STRICT
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    """``{"function": {"name", "arguments"}}``."""

    model_config = _STRICT
    function: FunctionCall


class Message(BaseModel):
    """A chat message; a ``tool`` message carries a result, named by ``tool_name``."""

    model_config = _STRICT
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None

    @field_validator("images")
    @classmethod
    def _no_images(cls, value: list[str] | None) -> list[str] | None:
        _unsupported("images (this model reads text only)", value)
        return value


class ChatRequest(_Generating):
    """``POST /api/chat``."""

    messages: list[Message] = Field(default_factory=list, max_length=MAX_MESSAGES)
    tools: list[Tool] | None = None


class ShowRequest(BaseModel):
    """``POST /api/show``: ``model``, or the older ``name``."""

    model_config = _STRICT
    model: str | None = None
    name: str | None = None
    verbose: bool = False
