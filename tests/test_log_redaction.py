"""Keys masked in log lines and records, on plain data."""

from __future__ import annotations

import logging

import pytest
from uvicorn.logging import AccessFormatter

from gemma_worker.log_redaction import install, redact, redact_record

SECRET = "sk-0123456789abcdef"


@pytest.mark.parametrize(
    "line",
    [
        f"< authorization: Bearer {SECRET}",
        f"< Authorization: Basic {SECRET}==",
        f"< x-api-key: {SECRET}",
        f"headers=[('authorization', 'Bearer {SECRET}')]",
        f"[(b'x-api-key', b'{SECRET}')]",
        f"{{'x-api-key': '{SECRET}'}}",
        f'127.0.0.1:5 - "WebSocket /ws?token={SECRET}&x=1" [accepted]',
        f"GET /v1/models?api_key={SECRET} HTTP/1.1",
        f"GET /v1/models;key={SECRET}",
        f"x_api_key={SECRET} token={SECRET}",
        f'{{"type": "auth", "token": "{SECRET}"}}',
        f"token sent as bearer {SECRET}.",
    ],
)
def test_keys_are_masked_once_and_for_all(line: str) -> None:
    masked = redact(line)
    assert SECRET not in masked
    assert "[redacted]" in masked
    assert redact(masked) == masked  # idempotent: the formatter masks again


@pytest.mark.parametrize(
    "line",
    [
        "request accepted request_id=r-1",
        "authorization failed for key-0123456789ab",
        "the bearer token was rejected",
        "a valid API key is required (Authorization: Bearer, or x-api-key)",
        "cache key=abc, n_tokens=12 max_tokens=8",
    ],
)
def test_other_lines_are_left_alone(line: str) -> None:
    assert redact(line) == line


def test_the_value_ends_at_the_key_and_what_follows_stays() -> None:
    assert redact(f"x-api-key: {SECRET} request_id=r-1") == "x-api-key: [redacted] request_id=r-1"


def test_a_record_keeps_its_shape() -> None:
    """uvicorn's access formatter unpacks the record's five arguments: they stay a tuple."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/v1/models?api_key={SECRET}", "1.1", 401),
        None,
    )
    redact_record(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    line = AccessFormatter("%(message)s", use_colors=False).format(record)
    assert SECRET not in line and "[redacted]" in line


def test_a_key_split_between_format_and_arguments_is_masked() -> None:
    record = logging.LogRecord(
        "websockets.server", logging.DEBUG, __file__, 1, "< %s: %s", ("x-api-key", SECRET), None
    )
    redact_record(record)
    assert record.getMessage() == "< x-api-key: [redacted]"


def test_every_record_is_masked_whatever_its_logger(caplog: pytest.LogCaptureFixture) -> None:
    install()
    install()  # idempotent
    caplog.set_level(logging.DEBUG)
    logging.getLogger("some.library").debug("< %s: %s", "Authorization", f"Bearer {SECRET}")
    assert SECRET not in caplog.text
    assert "[redacted]" in caplog.records[-1].getMessage()
