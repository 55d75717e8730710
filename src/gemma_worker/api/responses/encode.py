"""The core's generation events as Responses API objects: the ``response`` with its output
items, and the stream's typed events, each with its ``sequence_number``."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gemma_worker.api.openai.errors import openai_error, openai_status
from gemma_worker.api.responses.types import ResponsesRequest
from gemma_worker.core.errors import WorkerError
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.core.usage import Usage
from gemma_worker.engine.messages import Finished, Text


def new_response_id() -> str:
    """A fresh ``resp_...`` id."""
    return f"resp_{uuid.uuid4().hex}"


def usage_json(usage: Usage) -> dict[str, Any]:
    """The Responses API's usage (cached prompt tokens are counted in ``input_tokens``)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


@dataclass
class _Item:
    """One output item being built: a ``message`` or a ``function_call``."""

    kind: str
    id: str
    parts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""

    def json(self, status: str) -> dict[str, Any]:
        text = "".join(self.parts)
        if self.kind == "message":
            content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
            return {
                "type": "message",
                "id": self.id,
                "status": status,
                "role": "assistant",
                "content": content if status == "completed" else [],
            }
        return {
            "type": "function_call",
            "id": self.id,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": text if status == "completed" else "",
            "status": status,
        }


@dataclass
class ResponseEncoder:
    """Builds one answer's ``response`` object and its stream events."""

    body: ResponsesRequest
    model: str
    id: str = field(default_factory=new_response_id)
    created_at: int = field(default_factory=lambda: int(time.time()))
    items: list[_Item] = field(default_factory=list)
    _calls: dict[int, int] = field(default_factory=dict)  # tool call index -> item index
    _open: int | None = None
    _seq: int = 0

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A stream event of ``kind`` with the next sequence number."""
        self._seq += 1
        return {"type": kind, "sequence_number": self._seq - 1, **fields}

    def response(
        self,
        status: str,
        finished: Finished | None = None,
        error: WorkerError | None = None,
    ) -> dict[str, Any]:
        """The ``response`` object in ``status`` (``in_progress``, ``completed``,
        ``incomplete``, ``cancelled``, ``failed``)."""
        body = self.body
        output = [i.json("completed") for i in self.items] if finished is not None else []
        text = "".join("".join(i.parts) for i in self.items if i.kind == "message")
        fmt = body.text.format if body.text is not None and body.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None if error is None else _error_json(error),
            "incomplete_details": (
                {"reason": "max_output_tokens"}
                if finished is not None and finished.finish_reason == "length"
                else None
            ),
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "model": self.model,
            "output": output,
            "output_text": text if finished is not None else "",
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": body.store,
            "temperature": body.temperature,
            "text": {
                "format": (
                    {"type": "text"}
                    if fmt is None
                    else fmt.model_dump(by_alias=True, exclude_none=True)
                )
            },
            "tool_choice": (
                body.tool_choice
                if isinstance(body.tool_choice, str)
                else body.tool_choice.model_dump()
            ),
            "tools": body.tools or [],
            "top_p": body.top_p,
            "truncation": body.truncation,
            "usage": None if finished is None else usage_json(finished.usage),
            "user": body.user,
        }

    @staticmethod
    def status_of(finished: Finished) -> str:
        """``completed``, ``incomplete`` (cut by the length) or ``cancelled``."""
        if finished.finish_reason == "length":
            return "incomplete"
        return "cancelled" if finished.finish_reason == "cancelled" else "completed"

    def output_items(self) -> list[dict[str, Any]]:
        """The finished output items (what a later turn's history holds)."""
        return [i.json("completed") for i in self.items]

    # --- stream ---------------------------------------------------------------------------
    def start(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress``."""
        shown = self.response("in_progress")
        return [
            self.event("response.created", response=shown),
            self.event("response.in_progress", response=shown),
        ]

    def add(self, event: Text | ToolCallStart | ToolCallArguments) -> list[dict[str, Any]]:
        """Take one delta; the stream events that carry it."""
        out: list[dict[str, Any]] = []
        if isinstance(event, Text):
            if self._open is None or self.items[self._open].kind != "message":
                out += self._begin(_Item("message", f"msg_{uuid.uuid4().hex}"))
            assert self._open is not None
            item = self.items[self._open]
            item.parts.append(event.text)
            out.append(
                self.event(
                    "response.output_text.delta",
                    item_id=item.id,
                    output_index=self._open,
                    content_index=0,
                    delta=event.text,
                    logprobs=[],
                )
            )
        elif isinstance(event, ToolCallStart):
            item = _Item(
                "function_call",
                f"fc_{uuid.uuid4().hex}",
                call_id=f"call_{uuid.uuid4().hex[:24]}",
                name=event.name,
            )
            out += self._begin(item)
            assert self._open is not None
            self._calls[event.index] = self._open
        else:
            index = self._calls[event.index]
            item = self.items[index]
            item.parts.append(event.text)
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=index,
                    delta=event.text,
                )
            )
        return out

    def _begin(self, item: _Item) -> list[dict[str, Any]]:
        out = self._end()
        self.items.append(item)
        self._open = index = len(self.items) - 1
        out.append(
            self.event(
                "response.output_item.added", output_index=index, item=item.json("in_progress")
            )
        )
        if item.kind == "message":
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        return out

    def _end(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        item = self.items[index]
        text = "".join(item.parts)
        out = []
        if item.kind == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            common = {"item_id": item.id, "output_index": index, "content_index": 0}
            out.append(self.event("response.output_text.done", text=text, logprobs=[], **common))
            out.append(self.event("response.content_part.done", part=part, **common))
        else:
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=text,
                )
            )
        out.append(
            self.event("response.output_item.done", output_index=index, item=item.json("completed"))
        )
        return out

    def finish(self, finished: Finished) -> list[dict[str, Any]]:
        """The open item's closing events, then ``response.completed`` (or ``.incomplete``)."""
        out = self._end()
        status = self.status_of(finished)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self.event(kind, response=self.response(status, finished)))
        return out

    def failed(self, error: WorkerError) -> dict[str, Any]:
        """``response.failed``: the stream's last event after an error. It takes the next
        sequence number without using it up: the stall guard builds its record up front."""
        event = {"type": "response.failed", "sequence_number": self._seq}
        return event | {"response": self.response("failed", error=error)}


def _error_json(error: WorkerError) -> dict[str, Any]:
    """A failed response's ``error``, its ``code`` one of those the SDK's type lists."""
    status = openai_status(error)
    code = (
        "rate_limit_exceeded"
        if status == 429
        else "server_error"
        if status >= 500
        else ("invalid_prompt")
    )
    return {"code": code, "message": openai_error(error)["message"]}
