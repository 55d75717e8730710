"""What the model is told about the functions it may call (sans-I/O): the text that joins a
conversation's system prompt when tools are offered, in every dialect."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from gemma_worker.core.conversation import Conversation
from gemma_worker.core.json_schema import ToolSpec

_NO_PARAMETERS = {"type": "object", "properties": {}}


def tools_instructions(tools: Sequence[ToolSpec], *, parallel: bool, forced: str | None) -> str:
    """The instructions for calling ``tools`` in the answer format of the tool grammar."""
    listing = "\n".join(
        json.dumps(
            {
                "name": t.name,
                "description": t.description,
                "parameters": _NO_PARAMETERS
                if t.parameters == {"type": "object"}
                else t.parameters,
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


def with_tool_instructions(
    conv: Conversation, tools: Sequence[ToolSpec], *, parallel: bool, forced: str | None
) -> Conversation:
    """``conv`` with the instructions for ``tools`` joined to its system text."""
    text = tools_instructions(tools, parallel=parallel, forced=forced)
    return dataclasses.replace(conv, system="\n\n".join(s for s in (conv.system, text) if s))
