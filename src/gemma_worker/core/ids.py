"""Ids the worker makes for requests, sessions and errors."""

from __future__ import annotations

import uuid


def new_id() -> str:
    """A fresh random id (UUID4, 122 random bits) for a request, session or error."""
    return str(uuid.uuid4())
