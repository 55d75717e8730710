"""API keys masked in log records, whatever logger writes them (uvicorn's lines show request
paths, the websockets library's DEBUG handshake dump shows every header).

:func:`install` wraps the process's log-record factory, so every record is masked as it is
made, for every handler; the worker's formatters mask each field again (extra fields and
tracebacks are not part of the message). Masking is idempotent and keeps a record's shape
(its ``args`` stay a tuple where they were one: uvicorn's access formatter unpacks them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

MASK = "[redacted]"

_NOT_MASKED = r"(?!\[redacted\])"
#: "name: v", "name=v", ('name', 'v'), (b'name', b'v')
_SEP = r"([\"']?\s*[:=]\s*(?:b(?=[\"']))?[\"']?|[\"'],\s*b?[\"'])"
_VALUE = r"[^\s\"',;\\]"

#: What carries a key: auth headers as the handshake dump writes them (``< name: value``) or
#: as pairs; a bearer token anywhere; a key in a URL's query; an auth message's ``"token"``.
#: Each has three groups: what stays, the separator, the secret.
_SECRETS = (
    re.compile(
        rf"(?i)\b((?:proxy-)?authorization){_SEP}((?:[a-z][\w-]*\s+)?{_NOT_MASKED}{_VALUE}{{8,}})"
    ),
    re.compile(rf"(?i)\b(x[-_]api[-_]key|api[-_]key){_SEP}({_NOT_MASKED}{_VALUE}+)"),
    re.compile(rf"(?i)\b(bearer)(\s+)({_NOT_MASKED}[^\s\"',;)\]}}\\]{{8,}})"),
    re.compile(
        r"(?i)((?:[?&;]|\b)(?:token|api[-_]?key|access_token|auth)|[?&;]key)(=)"
        rf"({_NOT_MASKED}[^&\s\"'#;\\]+)"
    ),
    re.compile(rf"(?i)(\"(?:token|api_key|apikey)\")(\s*:\s*\")({_NOT_MASKED}[^\"\\]*)"),
)


#: Every pattern above names one of these: text without any carries no key (most lines).
_MAY_CARRY = re.compile(r"(?i)auth|key|bearer|token")


def redact(text: str) -> str:
    """``text`` with every API key it carries replaced by ``[redacted]``."""
    if not _MAY_CARRY.search(text):
        return text
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m[1] + m[2] + MASK, text)
    return text


def redact_value(value: object) -> object:
    """``value`` masked if it is text (or bytes) carrying a key; anything else as it is."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
        masked = redact(text)
        return value if masked == text else masked.encode()
    return value


def redact_record(record: logging.LogRecord) -> None:
    """Mask ``record``'s message in place: its arguments one by one where that is enough (the
    record keeps its shape), else the whole formatted message."""
    if isinstance(record.args, tuple):
        record.args = tuple(redact_value(a) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: redact_value(v) for k, v in record.args.items()}
    record.msg = redact_value(record.msg)
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it, with the masked arguments
        return
    masked = redact(message)
    if masked != message:  # a key split over the format and its arguments
        record.msg, record.args = masked, ()


def _factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        redact_record(record)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    return factory


def install() -> None:
    """Mask every log record made from now on (idempotent)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "redacts", False):
        logging.setLogRecordFactory(_factory(current))
