import json
import logging

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
