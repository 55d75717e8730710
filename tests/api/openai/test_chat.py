"""Folding an OpenAI conversation into Gemma's strict user/model turns (pure)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from gemma_worker.api.openai.chat import to_conversation
from gemma_worker.api.openai.types import Message
from gemma_worker.core.json_schema import ToolSpec
from gemma_worker.core.tool_prompt import with_tool_instructions

MESSAGES = TypeAdapter(list[Message])


def conv(messages: list[dict[str, Any]], tools: str | None = None) -> Any:
    c = to_conversation(MESSAGES.validate_python(messages))
    if tools is None:
        return c
    return with_tool_instructions(
        c, [ToolSpec(tools, {"type": "object"})], parallel=False, forced=None
    )


def test_system_and_developer_fold_into_the_system_text() -> None:
    c = conv(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
            {"role": "user", "content": "Hi"},
        ],
        tools="TOOLS",
    )
    assert c.system.startswith("Be brief.\n\nNo lists.\n\nYou may call these functions")
    assert '"name": "TOOLS"' in c.system
    assert c.history == () and c.input == "Hi" and c.format == "chat"


def test_consecutive_roles_merge_and_turns_alternate() -> None:
    c = conv(
        [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "user", "content": "e"},
        ]
    )
    assert [(t.user, t.assistant) for t in c.history] == [("a\n\nb", "c\n\nd")]
    assert c.input == "e"


def test_tool_calls_and_results_are_rendered() -> None:
    c = conv(
        [
            {"role": "user", "content": "Add 2 and 3"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a":2,"b":3}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        ]
    )
    (turn,) = c.history
    assert turn.assistant == '{"name": "add", "arguments": {"a": 2, "b": 3}}'
    assert c.input == "Result of add (call call_1):\n5"


def test_a_conversation_starting_or_ending_with_the_assistant_still_alternates() -> None:
    c = conv([{"role": "assistant", "content": "Hello!"}])
    assert [(t.user, t.assistant) for t in c.history] == [("", "Hello!")]
    assert c.input == ""
