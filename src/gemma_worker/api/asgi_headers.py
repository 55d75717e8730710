"""Reading one request header straight from the ASGI scope, where building Starlette's
``Headers`` for a single lookup would cost more than the lookup (hot paths: the Host check,
the body limit, the embedding routes)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope


def first_header(scope: Scope, name: bytes) -> bytes | None:
    """The raw value of the request's first ``name`` header (``name`` in lower case)."""
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
