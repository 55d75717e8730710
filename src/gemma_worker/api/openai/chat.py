"""An OpenAI conversation as a Gemma conversation (sans-I/O).

Gemma's template has no system or tool role and wants strict user/model alternation starting
with a user turn. So: system and developer messages are folded into the first user turn (with
the tool list, when tools are offered); tool results become user text; assistant tool calls are
written in the same JSON form the model is constrained to answer in; consecutive messages of one
role are merged. Any valid OpenAI conversation renders. The tool list joins the system text in
the pipeline (:mod:`gemma_worker.core.tool_prompt`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gemma_worker.api.openai.types import (
    AssistantMessage,
    Content,
    Message,
    SystemMessage,
    Tool,
    ToolMessage,
    UserMessage,
)
from gemma_worker.core.conversation import Conversation, Turn
from gemma_worker.core.json_schema import ToolSpec


def content_text(content: Content | None) -> str:
    """A message's text (its text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def tool_spec(tool: Tool) -> ToolSpec:
    """What the pipeline needs of an offered function (no parameters: any object)."""
    fn = tool.function
    return ToolSpec(fn.name, fn.parameters or {"type": "object"}, fn.description or "")


def call_json(name: str, arguments: str) -> str:
    """One call in the answer format of the tool grammar."""
    try:
        args = json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        args = json.dumps({})
    return f'{{"name": "{name}", "arguments": {args}}}'


def to_conversation(messages: Sequence[Message]) -> Conversation:
    """The Gemma conversation for ``messages`` (the pipeline adds the tool instructions)."""
    system = [content_text(m.content) for m in messages if isinstance(m, SystemMessage)]
    names: dict[str, str] = {}
    parts_of: list[tuple[str, list[str]]] = []  # (role, texts) with roles user/assistant, merged

    def add(role: str, text: str) -> None:
        if parts_of and parts_of[-1][0] == role:
            if text:  # joined once at the end: repeated concatenation is quadratic
                parts_of[-1][1].append(text)
        else:
            parts_of.append((role, [text]))

    for m in messages:
        if isinstance(m, UserMessage):
            add("user", content_text(m.content))
        elif isinstance(m, AssistantMessage):
            parts = [content_text(m.content)] if m.content else []
            calls = m.tool_calls or []
            for call in calls:
                names[call.id] = call.function.name
            rendered = [call_json(c.function.name, c.function.arguments) for c in calls]
            if len(rendered) > 1:
                parts.append("[" + ", ".join(rendered) + "]")
            elif rendered:
                parts.append(rendered[0])
            add("assistant", "\n".join(parts))
        elif isinstance(m, ToolMessage):
            name = names.get(m.tool_call_id, "a function")
            add("user", f"Result of {name} (call {m.tool_call_id}):\n{content_text(m.content)}")
    turns = [(role, "\n\n".join(texts)) for role, texts in parts_of]
    if not turns or turns[0][0] != "user":
        turns.insert(0, ("user", ""))
    if turns[-1][0] != "user":
        turns.append(("user", ""))
    history = tuple(Turn(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2))
    text = "\n\n".join(s for s in system if s) or None
    return Conversation(turns[-1][1], "chat", history, text)
