"""The core's generation events as Ollama objects: ND-JSON lines and whole answers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.engine.messages import Finished

_NS_PER_MS = 1_000_000


def created_at() -> str:
    """Now, as Ollama writes it (RFC 3339, UTC)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def ndjson(payload: dict[str, Any]) -> str:
    """One ND-JSON line."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"


@dataclass
class _Call:
    name: str
    arguments: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        try:
            args = json.loads("".join(self.arguments) or "{}")
        except ValueError:
            args = {}
        return {
            "function": {"name": self.name, "arguments": args if isinstance(args, dict) else {}}
        }


@dataclass
class OllamaEncoder:
    """Encodes one answer of ``/api/generate`` (``kind="generate"``: text in ``response``) or
    ``/api/chat`` (``"chat"``: text in ``message.content``, calls in ``message.tool_calls``).

    Tool calls are collected from their deltas and sent whole, as Ollama does, in one line
    before the last.
    """

    model: str
    kind: Literal["generate", "chat"]
    #: How long the request waited for its model to load (Ollama's ``load_duration``).
    load_ns: int = 0
    started_ns: int = field(default_factory=time.monotonic_ns)
    text: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)

    def _line(
        self, text: str, done: bool, calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.kind == "generate":
            out["response"] = text
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        out["done"] = done
        return out

    def add_text(self, text: str) -> dict[str, Any]:
        """Keep ``text``; the streamed line that carries it."""
        self.text.append(text)
        return self._line(text, done=False)

    def add_call(self, event: ToolCallStart | ToolCallArguments) -> None:
        """Keep a tool-call delta."""
        if isinstance(event, ToolCallStart):
            self.calls[event.index] = _Call(event.name)
        else:
            self.calls[event.index].arguments.append(event.text)

    def calls_line(self) -> dict[str, Any] | None:
        """The streamed line with the whole tool calls (``None`` when there are none)."""
        if not self.calls:
            return None
        return self._line("", done=False, calls=[c.to_json() for c in self.calls.values()])

    def final(self, event: Finished, whole: bool) -> dict[str, Any]:
        """The last line (``whole=False``: streamed, its text already sent) or the whole answer
        (``whole=True``: all the text and calls), with the counts and durations."""
        calls = [c.to_json() for c in self.calls.values()] if whole else None
        out = self._line("".join(self.text) if whole else "", done=True, calls=calls)
        t, u = event.timings, event.usage
        ttft = t.ttft_ms if t.ttft_ms is not None else t.total_ms
        out.update(
            done_reason=event.finish_reason,
            total_duration=time.monotonic_ns() - self.started_ns + self.load_ns,
            load_duration=self.load_ns,
            prompt_eval_count=u.prompt_tokens,
            prompt_eval_duration=round(max(0.0, ttft - t.queue_ms) * _NS_PER_MS),
            eval_count=u.completion_tokens,
            eval_duration=round(max(0.0, t.total_ms - ttft) * _NS_PER_MS),
        )
        return out

    def loaded(self, done_reason: str = "load") -> dict[str, Any]:
        """The answer to an empty request: Ollama's way to load a model (``done_reason:
        load``) or, with ``keep_alive: 0``, to unload it (``unload``)."""
        out = self._line("", done=True)
        out["done_reason"] = done_reason
        if done_reason == "load":
            out["total_duration"] = time.monotonic_ns() - self.started_ns
            out["load_duration"] = out["total_duration"]
        return out
