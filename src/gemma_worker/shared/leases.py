"""Leases: at most ``cap`` holders of a key at once, in this process or across replicas.

A lease is how a replica says "I am running this": a session's turn (cap 1, behind
``SESSION_BUSY``) or one of a client's concurrent generations (cap ``max_concurrent_per_key``).
Shared leases live in Redis and expire unless their holder renews them, so the leases of a
replica that dies free themselves after ``ttl_seconds``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import uuid
from typing import Protocol

from redis import Redis, RedisError

from gemma_worker.shared.errors import SharedStateError

log = logging.getLogger(__name__)


class LeaseTable(Protocol):
    """Who holds what. ``acquire`` may do I/O; ``release`` never blocks (it may run from a
    garbage-collection finalizer)."""

    async def acquire(self, key: str, cap: int) -> str | None:
        """A token for one of ``cap`` places on ``key``, or ``None`` when all are taken.
        Raises :class:`SharedStateError` when the shared store cannot be asked."""
        ...

    def release(self, key: str, token: str) -> None:
        """Give the place back (unknown tokens are ignored)."""
        ...

    async def release_now(self, key: str, token: str) -> None:
        """Give the place back and return once every replica sees it free."""
        ...

    def held(self) -> frozenset[str]:
        """The keys this process holds a lease on."""
        ...

    async def keep_alive(self) -> None:
        """Renew this process's leases until cancelled (shared tables only)."""
        ...

    def close(self) -> None:
        """Release what is held and stop background work."""
        ...


class LocalLeases:
    """Leases of this process alone (one host, no Redis). Call from the event loop."""

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}

    async def acquire(self, key: str, cap: int) -> str | None:
        """See :class:`LeaseTable`."""
        holders = self._holders.setdefault(key, set())
        if len(holders) >= cap:
            return None
        token = uuid.uuid4().hex
        holders.add(token)
        return token

    def release(self, key: str, token: str) -> None:
        """See :class:`LeaseTable`."""
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(token)
            if not holders:
                del self._holders[key]

    async def release_now(self, key: str, token: str) -> None:
        """See :class:`LeaseTable`."""
        self.release(key, token)

    def held(self) -> frozenset[str]:
        """See :class:`LeaseTable`."""
        return frozenset(self._holders)

    async def keep_alive(self) -> None:
        """Nothing expires locally: wait until cancelled."""
        await asyncio.Event().wait()

    def close(self) -> None:
        """Forget every lease."""
        self._holders.clear()


# A sorted set per key: member = token, score = expiry in Redis's own clock (ms), so the
# replicas' clocks never matter. Expired members are dropped before counting.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local lost = 0
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + ttl, ARGV[i + 1]) == 0 and
     redis.call('ZSCORE', key, ARGV[i + 1]) == false then
    lost = lost + 1
  else
    redis.call('PEXPIRE', key, ttl)
  end
end
return lost
"""


class RedisLeases:
    """Leases shared by every replica that uses the same Redis and ``prefix``."""

    def __init__(self, client: Redis, *, prefix: str, ttl_seconds: float) -> None:
        self._client = client
        self._prefix = prefix + "lease:"
        self._ttl_ms = max(1000, int(ttl_seconds * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._lock = threading.Lock()
        self._mine: dict[tuple[str, str], None] = {}
        # Releases are fire-and-forget on one thread, in order.
        self._releaser = concurrent.futures.ThreadPoolExecutor(1, "lease-release")

    @property
    def renew_interval(self) -> float:
        """Seconds between renewals: a third of the TTL, so one missed renewal is harmless."""
        return self._ttl_ms / 3000

    async def acquire(self, key: str, cap: int) -> str | None:
        """See :class:`LeaseTable`."""
        token = uuid.uuid4().hex
        try:
            got = await asyncio.to_thread(
                self._acquire, keys=[self._prefix + key], args=[self._ttl_ms, cap, token]
            )
        except RedisError as exc:
            raise SharedStateError(f"lease store: {exc}") from exc
        if not got:
            return None
        with self._lock:
            self._mine[(key, token)] = None
        return token

    def release(self, key: str, token: str) -> None:
        """See :class:`LeaseTable`."""
        with self._lock:
            if self._mine.pop((key, token), 0) == 0:
                return
        with contextlib.suppress(RuntimeError):  # closed: the lease expires by itself
            self._releaser.submit(self._delete, key, token)

    async def release_now(self, key: str, token: str) -> None:
        """See :class:`LeaseTable`. A failure is logged: the lease then expires by itself."""
        with self._lock:
            if self._mine.pop((key, token), 0) == 0:
                return
        await asyncio.to_thread(self._delete, key, token)

    def _delete(self, key: str, token: str) -> None:
        try:
            self._client.zrem(self._prefix + key, token)
        except RedisError:
            log.warning("could not release a lease; it expires by itself", exc_info=True)

    def held(self) -> frozenset[str]:
        """See :class:`LeaseTable`."""
        with self._lock:
            return frozenset(key for key, _ in self._mine)

    def renew(self) -> int:
        """Push back the expiry of every lease held here; how many were found lost (expired
        while this process could not renew them). Blocking."""
        with self._lock:
            mine = list(self._mine)
        if not mine:
            return 0
        lost = int(
            self._renew(
                keys=[self._prefix + key for key, _ in mine],
                args=[self._ttl_ms, *(token for _, token in mine)],
            )
        )
        if lost:
            log.warning("leases expired before they were renewed", extra={"lost": lost})
        return lost

    async def keep_alive(self) -> None:
        """Renew every :attr:`renew_interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.renew_interval)
            try:
                await asyncio.to_thread(self.renew)
            except RedisError:
                log.warning("could not renew leases", exc_info=True)

    def close(self) -> None:
        """Release every lease held here and wait for the releases to go out."""
        with self._lock:
            mine = list(self._mine)
        for key, token in mine:
            self.release(key, token)
        self._releaser.shutdown(wait=True)
