import json
import logging
import sys

from gemma_worker.logging_setup import JsonFormatter, TextFormatter


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


def test_formatters_mask_extra_fields_and_tracebacks() -> None:
    record = make_record()
    record.header = "x-api-key: sk-0123456789ab"
    try:
        raise RuntimeError("Bearer sk-0123456789ab")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    for formatter in (TextFormatter(), JsonFormatter()):
        assert "sk-0123456789ab" not in formatter.format(record)
    record.exc_info = None
    record.quoted = 'Authorization: Bearer sk-0123456789ab"'  # a quote after the key
    line = JsonFormatter().format(record)
    assert json.loads(line)["request_id"] == "r-1"  # still JSON, other fields kept
    assert "sk-0123456789ab" not in line
