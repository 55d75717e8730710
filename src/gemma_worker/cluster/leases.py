"""Leases: at most ``cap`` holders of a key at once, in this process or across replicas.

A lease is how a replica says "I am running this": a session's turn (cap 1, behind
``SESSION_BUSY``) or one of a client's concurrent generations (cap ``max_concurrent_per_key``).
Shared leases live in Redis and expire unless their holder renews them, so the leases of a
replica that dies free themselves after ``ttl_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections import deque
from typing import Protocol

from redis import Redis, RedisError

from gemma_worker.cluster.errors import SharedStateError

log = logging.getLogger(__name__)


class LeaseTable(Protocol):
    """Who holds what. Every method but :meth:`release` is called on the event loop.
    ``release`` may be called from anywhere, a garbage-collection finalizer included: it only
    records the release (no lock, no I/O), and the table applies it promptly."""

    async def acquire(self, key: str, cap: int) -> str | None:
        """A token for one of ``cap`` places on ``key``, or ``None`` when all are taken.
        Raises :class:`SharedStateError` when the shared store cannot be asked."""
        ...

    def release(self, key: str, token: str) -> None:
        """Give the place back, soon (unknown tokens are ignored)."""
        ...

    async def release_now(self, key: str, token: str) -> None:
        """Give the place back and return once every replica sees it free."""
        ...

    def held(self) -> frozenset[str]:
        """The keys this process holds a lease on."""
        ...

    async def keep_alive(self) -> None:
        """Apply releases and renew this process's leases until cancelled."""
        ...

    def close(self) -> None:
        """Release what is held and stop background work."""
        ...


class LocalLeases:
    """Leases of this process alone (one host, no Redis)."""

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}
        self._released: deque[tuple[str, str]] = deque()

    def _apply_releases(self) -> None:
        while self._released:
            key, token = self._released.popleft()
            self._drop(key, token)

    def _drop(self, key: str, token: str) -> None:
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(token)
            if not holders:
                del self._holders[key]

    async def acquire(self, key: str, cap: int) -> str | None:
        """See :class:`LeaseTable`."""
        self._apply_releases()
        holders = self._holders.setdefault(key, set())
        if len(holders) >= cap:
            return None
        token = uuid.uuid4().hex
        holders.add(token)
        return token

    def release(self, key: str, token: str) -> None:
        """See :class:`LeaseTable`."""
        self._released.append((key, token))

    async def release_now(self, key: str, token: str) -> None:
        """See :class:`LeaseTable`."""
        self._apply_releases()
        self._drop(key, token)

    def held(self) -> frozenset[str]:
        """See :class:`LeaseTable`."""
        self._apply_releases()
        return frozenset(self._holders)

    async def keep_alive(self) -> None:
        """Nothing expires locally: wait until cancelled."""
        await asyncio.Event().wait()

    def close(self) -> None:
        """Forget every lease."""
        self._released.clear()
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

    #: How often released leases are deleted from Redis (when they were not released with
    #: :meth:`release_now`, e.g. by a finalizer after a client left).
    FLUSH_SECONDS = 0.05

    def __init__(self, client: Redis, *, prefix: str, ttl_seconds: float) -> None:
        self._client = client
        self._prefix = prefix + "lease:"
        self._ttl_ms = max(1000, int(ttl_seconds * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        # Touched only on the event loop; release() only appends to _released.
        self._mine: set[tuple[str, str]] = set()
        self._released: deque[tuple[str, str]] = deque()

    @property
    def renew_interval(self) -> float:
        """Seconds between renewals: a third of the TTL, so one missed renewal is harmless."""
        return self._ttl_ms / 3000

    async def acquire(self, key: str, cap: int) -> str | None:
        """See :class:`LeaseTable`."""
        await self._flush()  # a place this process just gave back is free here at once
        token = uuid.uuid4().hex
        try:
            got = await asyncio.to_thread(
                self._acquire, keys=[self._prefix + key], args=[self._ttl_ms, cap, token]
            )
        except RedisError as exc:
            raise SharedStateError(f"lease store: {exc}") from exc
        if not got:
            return None
        self._mine.add((key, token))
        return token

    def release(self, key: str, token: str) -> None:
        """See :class:`LeaseTable`."""
        self._released.append((key, token))

    async def release_now(self, key: str, token: str) -> None:
        """See :class:`LeaseTable`. A failure is logged: the lease then expires by itself."""
        if (key, token) not in self._mine:
            return
        self._mine.remove((key, token))
        await asyncio.to_thread(self._delete, [(key, token)])

    def _take_released(self) -> list[tuple[str, str]]:
        gone = []
        while self._released:
            item = self._released.popleft()
            if item in self._mine:
                self._mine.remove(item)
                gone.append(item)
        return gone

    async def _flush(self) -> None:
        gone = self._take_released()
        if gone:
            await asyncio.to_thread(self._delete, gone)

    def _delete(self, leases: list[tuple[str, str]]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, token in leases:
                pipe.zrem(self._prefix + key, token)
            pipe.execute()
        except RedisError:
            log.warning("could not release leases; they expire by themselves", exc_info=True)

    def held(self) -> frozenset[str]:
        """See :class:`LeaseTable`."""
        released = set(self._released)
        return frozenset(key for key, token in self._mine if (key, token) not in released)

    def renew(self, leases: list[tuple[str, str]]) -> int:
        """Push back the expiry of ``leases``; how many were found lost (expired while this
        process could not renew them). Blocking."""
        if not leases:
            return 0
        lost = int(
            self._renew(
                keys=[self._prefix + key for key, _ in leases],
                args=[self._ttl_ms, *(token for _, token in leases)],
            )
        )
        if lost:
            log.warning("leases expired before they were renewed", extra={"lost": lost})
        return lost

    async def keep_alive(self) -> None:
        """Delete released leases every :attr:`FLUSH_SECONDS` and renew the held ones every
        :attr:`renew_interval` seconds, until cancelled."""
        loop = asyncio.get_running_loop()
        next_renewal = loop.time() + self.renew_interval
        while True:
            await asyncio.sleep(self.FLUSH_SECONDS)
            try:
                await self._flush()
                if loop.time() >= next_renewal:
                    next_renewal = loop.time() + self.renew_interval
                    await asyncio.to_thread(self.renew, list(self._mine))
            except RedisError:
                log.warning("could not renew leases", exc_info=True)

    def close(self) -> None:
        """Release every lease held here (blocking: at shutdown)."""
        gone = self._take_released() + list(self._mine)
        self._mine.clear()
        if gone:
            self._delete(gone)


class Hold:
    """One lease held by this process until :meth:`end` (awaited: every replica sees the
    place free when it returns) or :meth:`release` (soon), or until the hold is
    garbage-collected (a request dropped on the way)."""

    def __init__(self, table: LeaseTable, key: str, token: str) -> None:
        self._table = table
        self._key = key
        self._token = token
        self._finalizer = weakref.finalize(self, table.release, key, token)

    @classmethod
    async def take(cls, table: LeaseTable, key: str, cap: int) -> Hold | None:
        """One of ``cap`` places on ``key``, or ``None`` when all are taken."""
        token = await table.acquire(key, cap)
        return None if token is None else cls(table, key, token)

    def release(self) -> None:
        """Give the place back soon (idempotent; never blocks)."""
        self._finalizer()

    async def end(self) -> None:
        """Give the place back now (idempotent)."""
        if self._finalizer.detach() is not None:
            await self._table.release_now(self._key, self._token)
