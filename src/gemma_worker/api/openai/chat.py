"""An OpenAI conversation as a Gemma conversation (sans-I/O).

Gemma's template has no system or tool role and wants strict user/model alternation starting
with a user turn. So: system and developer messages are folded into the first user turn (with
the tool list, when tools are offered); tool results become user text; assistant tool calls are
written in the same JSON form the model is constrained to answer in; consecutive messages of one
role are merged. Any valid OpenAI conversation renders.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence

from gemma_worker.api.openai.types import (
    AssistantMessage,
    Content,
    Message,
    SystemMessage,
    Tool,
    ToolMessage,
    UserMessage,
)
from gemma_worker.api.state import WorkerState
from gemma_worker.core.conversation import Conversation, Turn
from gemma_worker.engine.prompt import Prompt


def content_text(content: Content | None) -> str:
    """A message's text (its text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def call_json(name: str, arguments: str) -> str:
    """One call in the answer format of the tool grammar."""
    try:
        args = json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        args = json.dumps({})
    return f'{{"name": "{name}", "arguments": {args}}}'


def tools_instructions(tools: Sequence[Tool], *, parallel: bool, forced: str | None) -> str:
    """What the model is told about the functions it may call."""
    listing = "\n".join(
        json.dumps(
            {
                "name": t.function.name,
                "description": t.function.description or "",
                "parameters": t.function.parameters or {"type": "object", "properties": {}},
            },
            ensure_ascii=False,
        )
        for t in tools
    )
    how = 'answer with only a JSON object {"name": <function name>, "arguments": <object>}'
    if parallel:
        how += ", or a JSON array of such objects to call several"
    lead = f"Call the function {forced}" if forced else "You may call these functions"
    return f"{lead}. To call a function, {how}.\nFunctions:\n{listing}"


async def render_chat(state: WorkerState, conversation: Callable[[], Conversation]) -> Prompt:
    """The prompt of the chat ``conversation()`` builds, made off the event loop (a chat of
    thousands of messages takes tens of ms to render), after the character limit is checked
    on all its text: messages, tool definitions, tool calls."""
    renderer = state.engine.renderer

    def build() -> Prompt:
        conv = conversation()
        state.limits.check_chars(conv.n_chars)
        return renderer.render(conv)

    return await asyncio.to_thread(build)


def to_conversation(messages: Sequence[Message], tools_text: str | None) -> Conversation:
    """The Gemma conversation for ``messages``; ``tools_text`` joins the system text."""
    system = [content_text(m.content) for m in messages if isinstance(m, SystemMessage)]
    if tools_text:
        system.append(tools_text)
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
