"""Structured logging: one line per event, key=value text or JSON.

Callers pass context through ``extra={"request_id": ..., "session_id": ...}``; every such field
is rendered. Prompt text is never logged at INFO or above. API keys are masked in every
record, whatever its logger (:mod:`gemma_worker.log_redaction`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from gemma_worker.log_redaction import install as install_redaction
from gemma_worker.log_redaction import redact, redact_value

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: redact_value(v)
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
        parts = [_timestamp(record), record.levelname, record.name, redact(record.getMessage())]
        parts.extend(f"{k}={v}" for k, v in _extra_fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON object."""
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
            **_extra_fields(record),
        }
        if record.exc_info:
            obj["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(obj, default=lambda v: redact(str(v)))


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
    install_redaction()
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
