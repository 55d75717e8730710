import json

import pytest

from gemma_worker.core.errors import ErrorCode
from gemma_worker.core.events import frame, token_event
from gemma_worker.core.ws_messages import (
    CancelMessage,
    ExecuteMessage,
    ProtocolError,
    parse_client_message,
)


def test_plain_object_is_an_execute() -> None:
    msg = parse_client_message('{"input": "hi", "max_tokens": 3, "request_id": "r1"}')
    assert isinstance(msg, ExecuteMessage)
    assert msg.request.input == "hi"
    assert msg.request.request_id == "r1"


def test_cancel_message() -> None:
    assert parse_client_message('{"type": "cancel", "request_id": "r1"}') == CancelMessage("r1")
    assert parse_client_message('{"type": "cancel"}') == CancelMessage(None)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", ErrorCode.INVALID_JSON),
        ("[1, 2]", ErrorCode.INVALID_JSON),
        ('"text"', ErrorCode.INVALID_JSON),
        ('{"input": NaN}', ErrorCode.INVALID_JSON),
        (b"\xff\xfe", ErrorCode.INVALID_JSON),
        ('{"type": "dance", "request_id": "r9"}', ErrorCode.INVALID_REQUEST),
        ('{"input": ""}', ErrorCode.INVALID_REQUEST),
        ('{"input": "x", "temperature": "hot"}', ErrorCode.INVALID_REQUEST),
        ('{"type": "cancel", "request_id": 5}', ErrorCode.INVALID_REQUEST),
    ],
)
def test_bad_messages(raw: str | bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw)
    assert info.value.code is code


def test_error_keeps_a_readable_request_id() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"input": "", "request_id": "abc"}')
    assert info.value.request_id == "abc"


def test_frame_is_one_json_line() -> None:
    line = frame(token_event("r", "a\nb"))
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"type": "token", "request_id": "r", "content": "a\nb"}
