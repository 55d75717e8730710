"""An Anthropic Messages request as the neutral request's parts (sans-I/O).

Its conversation becomes OpenAI messages, whose rendering
(:func:`~gemma_worker.api.openai.chat.to_conversation`) is the one the worker has: ``system``
folds into the first user turn, ``tool_use`` blocks are written as the calls the tool grammar
answers with, ``tool_result`` blocks become user text naming their call.
"""

from __future__ import annotations

import json
from typing import Any

from gemma_worker.api.anthropic.types import (
    Block,
    ImageBlock,
    MessageParam,
    OutputConfig,
    TextBlock,
    ThinkingBlock,
    ToolChoice,
    ToolParam,
    ToolResultBlock,
    ToolUseBlock,
)
from gemma_worker.api.openai import types as oa
from gemma_worker.api.openai.chat import to_conversation
from gemma_worker.api.tool_params import parse_tools
from gemma_worker.core.conversation import Conversation
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.json_schema import ToolSpec
from gemma_worker.core.response_format import JsonSchemaFormat, JsonSchemaSpec
from gemma_worker.runtime.request import Output, ToolUse


def _invalid(param: str, message: str) -> WorkerError:
    return WorkerError(ErrorCode.INVALID_REQUEST, f"{param}: {message}", param=param)


def system_text(system: str | list[TextBlock] | None) -> str | None:
    """``system`` as one text."""
    if system is None or isinstance(system, str):
        return system or None
    return "\n\n".join(b.text for b in system if b.text) or None


def _result_text(block: ToolResultBlock, where: str) -> str:
    if isinstance(block.content, str):
        text = block.content
    else:
        parts = []
        for j, part in enumerate(block.content):
            if isinstance(part, ImageBlock):
                raise _invalid(f"{where}.content[{j}]", f"{part.type} blocks are not supported")
            parts.append(part.text)
        text = "".join(parts)
    return f"(error) {text}" if block.is_error else text


def to_openai(system: str | None, messages: list[MessageParam]) -> list[oa.Message]:
    """The same conversation as OpenAI messages; ``INVALID_REQUEST`` naming an image block."""
    out: list[oa.Message] = []
    if system:
        out.append(oa.SystemMessage(role="system", content=system))
    for i, m in enumerate(messages):
        blocks: list[Block] = (
            [TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        )
        texts: list[str] = []
        calls: list[oa.ToolCallIn] = []
        for j, block in enumerate(blocks):
            where = f"messages[{i}].content[{j}]"
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ImageBlock):
                raise _invalid(where, f"{block.type} blocks are not supported (text only)")
            elif isinstance(block, ToolUseBlock):
                arguments = json.dumps(block.input, ensure_ascii=False)
                calls.append(
                    oa.ToolCallIn(
                        id=block.id, function=oa.FunctionCall(name=block.name, arguments=arguments)
                    )
                )
            elif isinstance(block, ToolResultBlock):
                if texts:
                    out.append(oa.UserMessage(role="user", content="".join(texts)))
                    texts = []
                out.append(
                    oa.ToolMessage(
                        role="tool",
                        content=_result_text(block, where),
                        tool_call_id=block.tool_use_id,
                    )
                )
            elif not isinstance(block, ThinkingBlock):  # pragma: no cover - the union is closed
                raise _invalid(where, "unknown block")
        if m.role == "assistant":
            out.append(
                oa.AssistantMessage(
                    role="assistant", content="".join(texts) or None, tool_calls=calls or None
                )
            )
        elif texts or not blocks:
            out.append(oa.UserMessage(role="user", content="".join(texts)))
    return out


def conversation(
    system: str | list[TextBlock] | None, messages: list[MessageParam]
) -> Conversation:
    """The Gemma conversation of a Messages request."""
    if not messages:
        raise _invalid("messages", "must not be empty")
    if messages[-1].role == "assistant":
        raise _invalid(
            f"messages[{len(messages) - 1}]",
            "a final assistant turn (prefilling the answer) is not supported: end with a user turn",
        )
    return to_conversation(to_openai(system_text(system), messages))


def tool_params(tools: list[dict[str, Any]] | None) -> list[ToolParam]:
    """The client tools; a server tool (``web_search_...``, ``bash_...``) or a malformed one is
    ``INVALID_REQUEST`` naming it."""
    return parse_tools(tools, ToolParam, types=(None, "custom"))


def output(
    tools: list[ToolParam], choice: ToolChoice | None, config: OutputConfig | None
) -> Output | None:
    """What the answer must be: tool calls, JSON for ``output_config.format``, or free text."""
    fmt = config.format if config is not None else None
    if not tools and choice is not None and choice.type in ("any", "tool"):
        raise _invalid("tool_choice", f"'{choice.type}' needs tools, and none are offered")
    if tools and not (choice is not None and choice.type == "none"):
        if fmt is not None:
            raise _invalid("output_config.format", "cannot be combined with tools")
        forced = choice.name if choice is not None and choice.type == "tool" else None
        if choice is not None and choice.type == "tool" and forced not in {t.name for t in tools}:
            raise _invalid("tool_choice.name", f"no tool named '{forced}' is offered")
        offered = tuple(
            ToolSpec(t.name, t.input_schema, t.description or "")
            for t in tools
            if forced in {None, t.name}
        )
        single = forced is not None or (choice is not None and choice.disable_parallel_tool_use)
        use = ToolUse(
            offered,
            required=choice is not None and choice.type in ("any", "tool"),
            parallel=not single,
            forced=forced,
        )
        return Output("tools", tools=use)
    if fmt is None:
        return None
    spec = JsonSchemaSpec(name="output_format", schema_=fmt.schema_)
    return Output(
        "output_config.format", format=JsonSchemaFormat(type="json_schema", json_schema=spec)
    )
