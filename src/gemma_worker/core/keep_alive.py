"""Ollama's ``keep_alive``: how long a model stays loaded after a request (sans-I/O).

A number is seconds; a string is a Go duration (``"5m"``, ``"1h30m"``, ``"300ms"``) or a
number of seconds; a negative value keeps the model loaded for good (``math.inf`` here);
``0`` unloads it as soon as the answer is out.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
#: Longer than this is "for good" (and keeps timers in range).
_FOREVER_S = 10 * 365 * 86_400.0


class KeepAliveError(ValueError):
    """Not a keep_alive value (the message says what is accepted)."""


def parse_keep_alive(value: str | float | int | bool | None) -> float:
    """Seconds to keep a model loaded (``math.inf``: for good)."""
    if isinstance(value, bool) or value is None:
        raise KeepAliveError("keep_alive must be a duration like '5m', a number of seconds or -1")
    if isinstance(value, int | float):
        return _bounded(float(value))
    text = value.strip()
    try:
        return _bounded(float(text))
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    total, at = 0.0, 0
    for match in _PART.finditer(body):
        if match.start() != at:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        at = match.end()
    if not body or at != len(body):
        raise KeepAliveError(
            f"keep_alive {value[:32]!r} is not a duration like '5m', '1h30m' or '300ms'"
        )
    return _bounded(sign * total)


def _bounded(seconds: float) -> float:
    if math.isnan(seconds):
        raise KeepAliveError("keep_alive must be a number")
    if seconds < 0 or seconds > _FOREVER_S:
        return math.inf
    return seconds
