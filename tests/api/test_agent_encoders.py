"""The Responses and Messages encoders on plain events (no model, no server): their event
order, numbering, stop reasons and failure records."""

from __future__ import annotations

from gemma_worker.api.anthropic.encode import MessageEncoder
from gemma_worker.api.responses.encode import ResponseEncoder
from gemma_worker.api.responses.types import ResponsesRequest
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.core.usage import Timings, Usage
from gemma_worker.engine.messages import Finished, Started, Text

TIMINGS = Timings(queue_ms=0.0, ttft_ms=1.0, tokens_per_second=10.0, total_ms=5.0)


def finished(reason: str = "stop", stop: str | None = None, cached: int = 0) -> Finished:
    return Finished(reason, Usage(12, 3, cached), TIMINGS, stop_sequence=stop)  # type: ignore[arg-type]


def test_a_text_then_a_call_closes_each_item_and_numbers_every_event() -> None:
    enc = ResponseEncoder(ResponsesRequest(input="hi"), "m")
    events = enc.start()
    events += enc.add(Text("Let me add. "))
    events += enc.add(ToolCallStart(0, "add"))
    events += enc.add(ToolCallArguments(0, '{"a": 2, '))
    events += enc.add(ToolCallArguments(0, '"b": 3}'))
    events += enc.finish(finished())
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["arguments"] == '{"a": 2, "b": 3}'
    assert final["output_text"] == "Let me add. "
    assert final["usage"]["input_tokens"] == 12 and final["usage"]["total_tokens"] == 15


def test_a_failure_takes_the_next_number_without_using_it_up() -> None:
    enc = ResponseEncoder(ResponsesRequest(input="hi"), "m")
    events = enc.start() + enc.add(Text("x"))
    error = WorkerError(ErrorCode.OVERLOADED, "the worker is shutting down")
    failed = enc.failed(error)
    assert failed["sequence_number"] == len(events) and enc.failed(error) == failed
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "server_error",
        "message": "the worker is shutting down",
    }


def test_a_cut_answer_is_incomplete_and_a_cancelled_one_says_so() -> None:
    enc = ResponseEncoder(ResponsesRequest(input="hi", max_output_tokens=3), "m")
    last = (enc.start() + enc.add(Text("abc")) + enc.finish(finished("length")))[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert ResponseEncoder.status_of(finished("cancelled")) == "cancelled"


def test_messages_stop_reasons() -> None:
    assert MessageEncoder("m").stop_reason(finished()) == "end_turn"
    assert MessageEncoder("m").stop_reason(finished("length")) == "max_tokens"
    assert MessageEncoder("m").stop_reason(finished(stop="END")) == "stop_sequence"
    enc = MessageEncoder("m")
    enc.add(ToolCallStart(0, "add"))
    enc.add(ToolCallArguments(0, '{"a": 1}'))
    assert enc.stop_reason(finished()) == "tool_use"
    block = enc.response(finished())["content"][0]
    assert block["type"] == "tool_use" and block["input"] == {"a": 1}


def test_messages_stream_events_and_cache_reads() -> None:
    enc = MessageEncoder("m")
    events = enc.start(Started(20, 8)) + enc.start(None)  # once only
    events += enc.add(Text("Hi"))
    events += enc.add(ToolCallStart(0, "add"))
    events += enc.add(ToolCallArguments(0, "{}"))
    events += enc.finish(finished(cached=8))
    kinds = [e["type"] for e in events]
    assert kinds == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    usage = events[0]["message"]["usage"]
    assert usage["input_tokens"] == 12 and usage["cache_read_input_tokens"] == 8
    assert [e["index"] for e in events if e["type"] == "content_block_start"] == [0, 1]
    assert events[6]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
