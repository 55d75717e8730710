"""The core's generation events as Anthropic objects: a whole ``message``, or its SSE events
(``message_start``, ``content_block_*``, ``ping``, ``message_delta``, ``message_stop``)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.core.usage import Usage
from gemma_worker.engine.messages import Finished, Started, Text


def usage_json(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` are those not read from the prefix cache."""
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    }


@dataclass
class _Block:
    kind: str  # "text" or "tool_use"
    parts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""

    def json(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"type": "text", "text": "".join(self.parts)}
        try:
            arguments = json.loads("".join(self.parts) or "{}")
        except ValueError:
            arguments = {}
        return {
            "type": "tool_use",
            "id": self.id,
            "name": self.name,
            "input": arguments if isinstance(arguments, dict) else {},
        }


@dataclass
class MessageEncoder:
    """Builds one answer's ``message`` and stream events."""

    model: str
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex[:24]}")
    blocks: list[_Block] = field(default_factory=list)
    _calls: dict[int, int] = field(default_factory=dict)  # tool call index -> block index
    _open: int | None = None
    _started: bool = False

    def _head(self, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
        } | {"usage": usage_json(usage)}

    def stop_reason(self, finished: Finished) -> str:
        """``end_turn``, ``max_tokens``, ``stop_sequence`` or ``tool_use``."""
        if finished.finish_reason == "length":
            return "max_tokens"
        if finished.stop_sequence is not None:
            return "stop_sequence"
        if any(b.kind == "tool_use" for b in self.blocks):
            return "tool_use"
        return "end_turn"

    def add(self, event: Text | ToolCallStart | ToolCallArguments) -> list[dict[str, Any]]:
        """Take one delta; the stream events that carry it."""
        out: list[dict[str, Any]] = []
        if isinstance(event, Text):
            if self._open is None or self.blocks[self._open].kind != "text":
                out += self._start(_Block("text"), {"type": "text", "text": ""})
            assert self._open is not None
            self.blocks[self._open].parts.append(event.text)
            delta = {"type": "text_delta", "text": event.text}
        elif isinstance(event, ToolCallStart):
            block = _Block("tool_use", id=f"toolu_{uuid.uuid4().hex[:24]}", name=event.name)
            out += self._start(
                block, {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            )
            assert self._open is not None
            self._calls[event.index] = self._open
            return out
        else:
            index = self._calls[event.index]
            self.blocks[index].parts.append(event.text)
            delta = {"type": "input_json_delta", "partial_json": event.text}
        out.append({"type": "content_block_delta", "index": self._open, "delta": delta})
        return out

    def _start(self, block: _Block, shown: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close()
        self.blocks.append(block)
        self._open = len(self.blocks) - 1
        out.append({"type": "content_block_start", "index": self._open, "content_block": shown})
        return out

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [{"type": "content_block_stop", "index": index}]

    def start(self, started: Started | None) -> list[dict[str, Any]]:
        """``message_start`` (with the prompt's usage, once known) and a ``ping``, once."""
        if self._started:
            return []
        self._started = True
        usage = Usage(0, 0)
        if started is not None:
            usage = Usage(started.n_prompt_tokens, 0, started.n_cached_tokens)
        message = self._head(usage) | {
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def finish(self, finished: Finished) -> list[dict[str, Any]]:
        """The last events: the open block's stop, ``message_delta``, ``message_stop``."""
        out = self._close()
        delta = {"stop_reason": self.stop_reason(finished), "stop_sequence": finished.stop_sequence}
        out.append({"type": "message_delta", "delta": delta, "usage": usage_json(finished.usage)})
        out.append({"type": "message_stop"})
        return out

    def response(self, finished: Finished) -> dict[str, Any]:
        """The whole ``message``."""
        return self._head(finished.usage) | {
            "content": [b.json() for b in self.blocks],
            "stop_reason": self.stop_reason(finished),
            "stop_sequence": finished.stop_sequence,
        }
