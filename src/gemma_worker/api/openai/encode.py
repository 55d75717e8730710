"""The core's generation events as OpenAI objects: whole responses and SSE chunks."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gemma_worker import __version__
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.core.usage import Usage
from gemma_worker.engine.messages import Finished, Text, TokenLogprob

SYSTEM_FINGERPRINT = f"fp_gemma_worker_{__version__}"


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event."""
    data = (
        payload
        if isinstance(payload, str)
        else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {data}\n\n"


def _logprob_json(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.bytes),
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in lp.top
        ],
    }


@dataclass
class _ToolCallOut:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


def _complete(call: _ToolCallOut) -> bool:
    try:
        return isinstance(json.loads("".join(call.arguments)), dict)
    except ValueError:
        return False


@dataclass
class _Encoder:
    """What both encoders share: the object head and the stream's usage fields."""

    #: ``id`` prefix and the ``object`` of a stream chunk.
    _ID_PREFIX: ClassVar[str]
    _CHUNK_OBJECT: ClassVar[str]

    model: str
    logprobs: bool
    include_usage: bool
    id: str = field(init=False)
    created: int = field(init=False, default_factory=lambda: int(time.time()))
    tokens: list[TokenLogprob] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.id = f"{self._ID_PREFIX}-{uuid.uuid4().hex}"

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _streamed(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chunk before the last: ``usage: null`` when the usage comes in a chunk of its own."""
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The last chunk, when ``stream_options.include_usage``: no choices, the usage."""
        body = self._head(self._CHUNK_OBJECT)
        body["choices"] = []
        body["usage"] = usage_json(usage)
        return body


@dataclass
class ChatEncoder(_Encoder):
    """Builds ``chat.completion`` answers and ``chat.completion.chunk`` events for one request."""

    _ID_PREFIX = "chatcmpl"
    _CHUNK_OBJECT = "chat.completion.chunk"

    content: list[str] = field(init=False, default_factory=list)
    calls: list[_ToolCallOut] = field(init=False, default_factory=list)

    def add(self, event: Text | ToolCallStart | ToolCallArguments) -> dict[str, Any]:
        """Take one delta; the ``delta`` object that streams it."""
        if isinstance(event, Text):
            self.content.append(event.text)
            self.tokens.extend(event.logprobs)
            return {"content": event.text}
        if isinstance(event, ToolCallStart):
            call = _ToolCallOut(f"call_{uuid.uuid4().hex[:24]}", event.name)
            self.calls.append(call)
            return {
                "tool_calls": [
                    {
                        "index": event.index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": event.name, "arguments": ""},
                    }
                ]
            }
        self.calls[event.index].arguments.append(event.text)
        return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}

    def finish_reason(self, finished: Finished) -> str:
        """OpenAI's finish reason (``tool_calls`` when the answer is complete calls)."""
        if self.calls and finished.finish_reason == "stop" and all(map(_complete, self.calls)):
            return "tool_calls"
        return finished.finish_reason

    def chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> dict[str, Any]:
        """A ``chat.completion.chunk`` with one choice."""
        body = self._head("chat.completion.chunk")
        lp = {"content": [_logprob_json(t) for t in logprobs]} if self.logprobs else None
        body["choices"] = [
            {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}
        ]
        return self._streamed(body)

    def response(self, finished: Finished) -> dict[str, Any]:
        """The whole ``chat.completion``."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.content) if self.content or not self.calls else None,
            "refusal": None,
        }
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": "".join(c.arguments)},
                }
                for c in self.calls
            ]
        logprobs = (
            {"content": [_logprob_json(t) for t in self.tokens], "refusal": None}
            if self.logprobs
            else None
        )
        body = self._head("chat.completion")
        body["choices"] = [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": self.finish_reason(finished),
            }
        ]
        body["usage"] = usage_json(finished.usage)
        return body


@dataclass
class CompletionEncoder(_Encoder):
    """Builds ``text_completion`` answers and stream chunks for one request."""

    _ID_PREFIX = "cmpl"
    _CHUNK_OBJECT = "text_completion"

    text: list[str] = field(init=False, default_factory=list)
    _offset: int = field(init=False, default=0)

    def _logprobs(self, tokens: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> Any:
        if not self.logprobs:
            return None
        offsets = []
        for t in tokens:
            offsets.append(self._offset)
            self._offset += len(t.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{o.token: o.logprob for o in t.top} for t in tokens],
            "text_offset": offsets,
        }

    def _body(self, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
        body = self._head("text_completion")
        body["choices"] = [
            {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}
        ]
        return body

    def chunk(self, event: Text) -> dict[str, Any]:
        """A stream chunk for one piece of text."""
        return self._streamed(self._body(event.text, self._logprobs(event.logprobs), None))

    def final_chunk(self, finished: Finished) -> dict[str, Any]:
        """The chunk that carries the finish reason."""
        return self._streamed(self._body("", None, finished.finish_reason))

    def add(self, event: Text) -> None:
        """Collect text for the whole answer."""
        self.text.append(event.text)
        self.tokens.extend(event.logprobs)

    def response(self, finished: Finished) -> dict[str, Any]:
        """The whole ``text_completion``."""
        body = self._body("".join(self.text), self._logprobs(self.tokens), finished.finish_reason)
        body["usage"] = usage_json(finished.usage)
        return body
