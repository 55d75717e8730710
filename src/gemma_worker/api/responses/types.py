"""Responses API request types (the subset the worker serves; unknown fields ignored).

Input items stay plain JSON objects here: :mod:`.convert` reads them one by one, so that an
error names the item (``input[2].type``) and a stored answer's items are kept as sent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_BODY = ConfigDict(extra="ignore", populate_by_name=True)
_FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionTool(BaseModel):
    """``{"type": "function", "name", "description", "parameters", "strict"}``."""

    model_config = _BODY
    type: Literal["function"]
    name: Annotated[str, Field(pattern=_FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(BaseModel):
    """``{"type": "function", "name": ...}``: that call."""

    model_config = _BODY
    type: Literal["function"]
    name: str


class TextFormatOut(BaseModel):
    """``text.format``: ``text``, ``json_object``, or ``json_schema`` with ``name``,
    ``schema`` and ``strict``."""

    model_config = _BODY
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")] = (
        "response"
    )
    description: str | None = None
    schema_: Annotated[dict[str, Any], Field(alias="schema")] = Field(default_factory=dict)
    strict: bool | None = None


class TextConfig(BaseModel):
    """``text`` (``verbosity`` is ignored)."""

    model_config = _BODY
    format: TextFormatOut | None = None


class ResponsesRequest(BaseModel):
    """``POST /v1/responses`` (and ``/v1/responses/input_tokens``)."""

    model_config = _BODY
    model: str | None = None
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunctionChoice = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    user: str | None = None
