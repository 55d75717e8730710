"""A Responses API request as the neutral request's parts (sans-I/O).

Input items become OpenAI chat messages, whose rendering
(:func:`~gemma_worker.api.openai.chat.to_conversation`) is the one the worker has:
``instructions`` and ``system``/``developer`` messages fold into the first user turn, a
``function_call`` item is written as the call the tool grammar answers with, a
``function_call_output`` becomes user text naming its call.
"""

from __future__ import annotations

import re
from typing import Any

from gemma_worker.api.openai import types as oa
from gemma_worker.api.openai.chat import to_conversation
from gemma_worker.api.responses.types import FunctionTool, NamedFunctionChoice, ResponsesRequest
from gemma_worker.api.tool_params import parse_tools
from gemma_worker.core.conversation import Conversation
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.json_schema import ToolSpec
from gemma_worker.core.response_format import JsonObjectFormat, JsonSchemaFormat, JsonSchemaSpec
from gemma_worker.runtime.request import Output, ToolUse

Item = dict[str, Any]

_RESPONSE_ID = re.compile(r"resp_[A-Za-z0-9]{1,64}")
_TEXT_PARTS = {"input_text", "output_text", "text"}
#: Items an agent sends back that carry nothing for this model.
_IGNORED = {"reasoning"}


def invalid(param: str, message: str) -> WorkerError:
    """``INVALID_REQUEST`` naming ``param``."""
    return WorkerError(ErrorCode.INVALID_REQUEST, f"{param}: {message}", param=param)


def check_response_id(value: str, param: str) -> str:
    """``value`` if it is a well-formed response id (checked before it names a key)."""
    if not _RESPONSE_ID.fullmatch(value):
        raise invalid(param, "not a response id (resp_ and up to 64 letters or digits)")
    return value


def input_items(value: str | list[Item]) -> list[Item]:
    """The request's ``input`` as items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}] if value else []
    return value


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(where, "must be a string or a list of content parts")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if (
            not isinstance(kind, str)
            or kind not in _TEXT_PARTS
            or not isinstance(part.get("text"), str)
        ):
            shown = kind if isinstance(kind, str) else "that"
            raise invalid(f"{where}[{j}]", f"{shown} content is not supported (text only)")
        parts.append(part["text"])
    return "".join(parts)


def _field(item: Item, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise invalid(f"{where}.{name}", "must be a string")
    return value


def to_openai(instructions: str | None, items: list[Item]) -> list[oa.Message]:
    """The conversation of ``items`` as OpenAI messages; errors name ``input[i]``."""
    out: list[oa.Message] = []
    if instructions:
        out.append(oa.SystemMessage(role="system", content=instructions))
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, "must be an object")
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise invalid(f"{where}.type", "must be a string")
        if kind == "message":
            role = item.get("role")
            text = _text(item.get("content", ""), f"{where}.content")
            if role in ("system", "developer"):
                out.append(oa.SystemMessage(role="system", content=text))
            elif role == "user":
                out.append(oa.UserMessage(role="user", content=text))
            elif role == "assistant":
                out.append(oa.AssistantMessage(role="assistant", content=text))
            else:
                raise invalid(f"{where}.role", "must be user, assistant, system or developer")
        elif kind == "function_call":
            call = oa.ToolCallIn(
                id=_field(item, "call_id", where),
                function=oa.FunctionCall(
                    name=_field(item, "name", where), arguments=_field(item, "arguments", where)
                ),
            )
            last = out[-1] if out else None
            if isinstance(last, oa.AssistantMessage):
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                out.append(oa.AssistantMessage(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output", "")
            out.append(
                oa.ToolMessage(
                    role="tool",
                    content=_text(output, f"{where}.output"),
                    tool_call_id=_field(item, "call_id", where),
                )
            )
        elif kind not in _IGNORED:
            raise invalid(f"{where}.type", f"input items of type '{kind}' are not supported")
    return out


def conversation(instructions: str | None, items: list[Item]) -> Conversation:
    """The Gemma conversation of the items (earlier ones first)."""
    messages = to_openai(instructions, items)
    if not any(isinstance(m, oa.UserMessage | oa.ToolMessage) for m in messages):
        raise invalid("input", "must hold a user message or a function call output")
    return to_conversation(messages)


def function_tools(tools: list[dict[str, Any]] | None) -> list[FunctionTool]:
    """The function tools; any other type (``web_search``, ``file_search``, ``mcp``...) is
    ``INVALID_REQUEST`` naming it."""
    return parse_tools(tools, FunctionTool, types=("function",))


def output(body: ResponsesRequest, tools: list[FunctionTool]) -> Output | None:
    """What the answer must be: tool calls, JSON for ``text.format``, or free text."""
    fmt = body.text.format if body.text is not None else None
    choice = body.tool_choice
    if not tools and (choice == "required" or isinstance(choice, NamedFunctionChoice)):
        raise invalid("tool_choice", "a required or named call needs tools, and none are offered")
    if tools and choice != "none":
        if fmt is not None and fmt.type != "text":
            raise invalid("text.format", "cannot be combined with tools")
        forced = choice.name if isinstance(choice, NamedFunctionChoice) else None
        if forced is not None and forced not in {t.name for t in tools}:
            raise invalid("tool_choice.name", f"no function named '{forced}' is offered")
        offered = tuple(
            ToolSpec(t.name, t.parameters or {"type": "object"}, t.description or "")
            for t in tools
            if forced in {None, t.name}
        )
        use = ToolUse(
            offered,
            required=forced is not None or choice == "required",
            parallel=body.parallel_tool_calls and forced is None,
            forced=forced,
        )
        return Output("tools", tools=use)
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Output("text.format", format=JsonObjectFormat(type="json_object"))
    spec = JsonSchemaSpec(
        name=fmt.name, description=fmt.description, schema_=fmt.schema_, strict=fmt.strict
    )
    return Output("text.format", format=JsonSchemaFormat(type="json_schema", json_schema=spec))
