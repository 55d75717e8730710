"""The Redis connection the shared stores use."""

from __future__ import annotations

from redis import Redis


def connect(url: str) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``), thread-safe through
    its connection pool. Short timeouts: a stalled Redis must fail requests quickly (503),
    not hang them."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        health_check_interval=15,
        decode_responses=True,
    )
    return client
