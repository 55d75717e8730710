import json
import logging
import sys

import pytest

from gemma_worker.logging_setup import (
    JsonFormatter,
    TextFormatter,
    keep_secrets_out_of_logs,
    redact,
)


def make_record() -> logging.LogRecord:
    record = logging.LogRecord(
        "gemma_worker.x", logging.INFO, __file__, 1, "request accepted", None, None
    )
    record.request_id = "r-1"
    record.session_id = "s-1"
    return record


def test_json_lines_carry_context_fields() -> None:
    line = JsonFormatter().format(make_record())
    obj = json.loads(line)
    assert obj["msg"] == "request accepted"
    assert obj["level"] == "INFO"
    assert obj["request_id"] == "r-1"
    assert obj["session_id"] == "s-1"
    assert "\n" not in line


def test_text_lines_are_key_value() -> None:
    line = TextFormatter().format(make_record())
    assert line.endswith("request accepted request_id=r-1 session_id=s-1")
    assert "\n" not in line


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("< authorization: Bearer sk-live-0123456789", "sk-live-0123456789"),
        ("< Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("< x-api-key: sk-ant-0123456789", "sk-ant-0123456789"),
        ("headers=[('authorization', 'Bearer sk-abc-0123456789')]", "sk-abc-0123456789"),
        ("{'x-api-key': 'sk-abc-0123456789'}", "sk-abc-0123456789"),
        (
            '127.0.0.1:5 - "WebSocket /ws?token=sk-abc-0123456789&x=1" [accepted]',
            "sk-abc-0123456789",
        ),
        ("GET /v1/models?api_key=sk-abc-0123456789 HTTP/1.1", "sk-abc-0123456789"),
        ('{"type": "auth", "token": "sk-abc-0123456789"}', "sk-abc-0123456789"),
        ("token sent as bearer sk-abc-0123456789.", "sk-abc-0123456789"),
    ],
)
def test_keys_are_masked(line: str, secret: str) -> None:
    masked = redact(line)
    assert secret not in masked
    assert "[redacted]" in masked


@pytest.mark.parametrize(
    "line",
    [
        "request accepted request_id=r-1",
        "authorization failed for key-0123456789ab",
        "the key of a session: sid=abc, keys=3",
    ],
)
def test_other_lines_are_left_alone(line: str) -> None:
    assert redact(line) == line


def test_every_record_is_masked_whatever_its_logger(caplog: pytest.LogCaptureFixture) -> None:
    keep_secrets_out_of_logs()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("some.library").debug("< %s: %s", "Authorization", "Bearer sk-0123456789ab")
    assert "sk-0123456789ab" not in caplog.text
    assert caplog.records[-1].getMessage() == "< Authorization: [redacted]"


def test_formatters_mask_extra_fields_and_tracebacks() -> None:
    record = make_record()
    record.header = "x-api-key: sk-0123456789ab"
    try:
        raise RuntimeError("Bearer sk-0123456789ab")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    for formatter in (TextFormatter(), JsonFormatter()):
        assert "sk-0123456789ab" not in formatter.format(record)
