"""Ids the worker makes for requests, sessions and errors."""

from __future__ import annotations

import os


def new_id() -> str:
    """A fresh random id for a request, session or error: a UUID4 in its usual text form
    (122 random bits), written without :class:`uuid.UUID`, whose checks cost more than the
    randomness on a request of a few milliseconds."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
