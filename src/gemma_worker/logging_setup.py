"""Structured logging: one line per event, key=value text or JSON.

Callers pass context through ``extra={"request_id": ..., "session_id": ...}``; every such field
is rendered. Prompt text is never logged at INFO or above. Secrets never are, whatever logger
writes them (uvicorn's lines show request paths, websockets' DEBUG handshake dump shows every
header): :func:`redact` masks API keys in every record's message as it is made, and in every
line our formatters write.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


_MASK = "[redacted]"

#: What carries a key: auth headers (``name: value`` as the handshake dump writes them, or a
#: ``('name', 'value')`` pair), a bearer token anywhere, a key in a URL's query, an auth
#: message's ``"token"``.
_SECRETS = (
    re.compile(
        r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key)([\"']?\s*[:=]\s*[\"']?|[\"'],\s*[\"'])"
        r"([^\"'\r\n]+)"
    ),
    re.compile(r"(?i)\b(bearer)(\s+)([^\s\"',;)\]}]+)"),
    re.compile(r"(?i)([?&](?:token|key|api_key|api-key|apikey|access_token|auth))(=)([^&\s\"'#]+)"),
    re.compile(r"(?i)(\"(?:token|api_key|apikey|key)\")(\s*:\s*\")([^\"]*)"),
)


def redact(text: str) -> str:
    """``text`` with every API key it carries replaced by ``[redacted]``."""
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m[1] + m[2] + _MASK, text)
    return text


def _redacting_factory(
    make: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when it emits the record
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    return factory


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD_ATTRS and k != "color_message"  # uvicorn's, for its own output
    }


def _timestamp(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000Z INFO gemma_worker.api message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a single line."""
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        parts.extend(f"{k}={v}" for k, v in _extra_fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON object."""
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_extra_fields(record),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(obj, default=str))


class _NoFrameDumps(logging.Filter):
    """Drops the websockets library's per-frame DEBUG lines (``< TEXT '...'``), which uvicorn
    routes to its own logger: they would copy message contents, auth tokens included, into
    the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.DEBUG and record.module == "protocol")


_FRAME_FILTER = _NoFrameDumps()


def keep_secrets_out_of_logs() -> None:
    """Install what keeps message contents and keys out of the logs: every record made from
    now on has its keys masked (whatever logger, whatever handler), and the websockets
    library's frame dumps are dropped."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "redacts", False):
        logging.setLogRecordFactory(_redacting_factory(current))
    for name in ("uvicorn.error", "websockets.server", "websockets.protocol"):
        logger = logging.getLogger(name)
        if _FRAME_FILTER not in logger.filters:
            logger.addFilter(_FRAME_FILTER)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install the worker's log format on the root logger (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    keep_secrets_out_of_logs()
