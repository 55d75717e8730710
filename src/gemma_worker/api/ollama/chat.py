"""An Ollama conversation as a Gemma conversation (sans-I/O).

Ollama's messages differ from OpenAI's in two ways: a tool call's ``arguments`` is a JSON
object, and a tool result names its tool (``tool_name``) instead of a call id. Both become the
OpenAI message types, whose rendering (:func:`~gemma_worker.api.openai.chat.to_conversation`)
is the one the worker has.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gemma_worker.api.ollama.types import Message
from gemma_worker.api.openai import types as oa
from gemma_worker.api.openai.chat import to_conversation
from gemma_worker.core.conversation import Conversation


def to_openai(messages: Sequence[Message]) -> list[oa.Message]:
    """The same conversation as OpenAI messages: calls get ids ``call_<n>``, and a tool result
    answers the latest call of its tool (or the latest call when it names none)."""
    out: list[oa.Message] = []
    calls: list[tuple[str, str]] = []  # (id, name), oldest first
    for m in messages:
        if m.role == "system":
            out.append(oa.SystemMessage(role="system", content=m.content))
        elif m.role == "user":
            out.append(oa.UserMessage(role="user", content=m.content))
        elif m.role == "assistant":
            made = []
            for call in m.tool_calls or ():
                call_id = f"call_{len(calls)}"
                calls.append((call_id, call.function.name))
                arguments = json.dumps(call.function.arguments, ensure_ascii=False)
                made.append(
                    oa.ToolCallIn(
                        id=call_id,
                        function=oa.FunctionCall(name=call.function.name, arguments=arguments),
                    )
                )
            out.append(
                oa.AssistantMessage(role="assistant", content=m.content, tool_calls=made or None)
            )
        else:
            answered = [cid for cid, name in calls if m.tool_name in {None, name}]
            call_id = answered[-1] if answered else f"call_{m.tool_name or 'unknown'}"
            out.append(oa.ToolMessage(role="tool", content=m.content, tool_call_id=call_id))
    return out


def conversation(messages: Sequence[Message]) -> Conversation:
    """The Gemma conversation for ``messages``."""
    return to_conversation(to_openai(messages))
