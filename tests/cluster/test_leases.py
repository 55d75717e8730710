"""Leases on a real Redis, as two replicas see them, and in one process."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref

import pytest

from gemma_worker.cluster.errors import SharedStateError
from gemma_worker.cluster.leases import LeaseTable, LocalLeases, RedisLeases
from gemma_worker.cluster.redis_client import connect
from tests.programs import RedisServer


def pair(redis: RedisServer, ttl: float = 30.0) -> tuple[RedisLeases, RedisLeases]:
    """Two replicas' lease tables on one Redis."""
    prefix = f"leases-{uuid.uuid4().hex[:8]}:"
    return (
        RedisLeases(connect(redis.url), prefix=prefix, ttl_seconds=ttl),
        RedisLeases(connect(redis.url), prefix=prefix, ttl_seconds=ttl),
    )


def test_the_cap_holds_across_replicas(redis_server: RedisServer) -> None:
    a, b = pair(redis_server)

    async def run() -> None:
        first = await a.acquire("running:k", 2)
        second = await b.acquire("running:k", 2)
        assert first is not None and second is not None
        assert await a.acquire("running:k", 2) is None
        assert await b.acquire("running:k", 2) is None
        assert await b.acquire("running:other", 2) is not None  # keys are independent
        assert a.held() == frozenset({"running:k"})
        a.release("running:k", first)
        a.close()  # the release reaches Redis before close returns
        assert await b.acquire("running:k", 2) is not None

    asyncio.run(run())
    b.close()


def test_a_dead_replicas_lease_expires_and_a_live_one_is_renewed(
    redis_server: RedisServer,
) -> None:
    dead, live = pair(redis_server, ttl=3.0)

    async def run() -> None:
        assert await dead.acquire("turn:s1", 1) is not None  # never renewed: a dead replica
        assert await live.acquire("turn:s2", 1) is not None
        renewing = asyncio.create_task(live.keep_alive())  # renews every second
        await asyncio.sleep(4.0)
        assert await live.acquire("turn:s1", 1) is not None  # freed by expiry
        assert await dead.acquire("turn:s2", 1) is None  # kept by renewal
        renewing.cancel()

    asyncio.run(run())
    live.close()


def test_a_release_from_a_finalizer_reaches_the_other_replicas(
    redis_server: RedisServer,
) -> None:
    """What a dropped request does: its lease is released by a garbage-collection finalizer,
    which may run in any thread at any moment, so it must neither block nor do I/O."""
    a, b = pair(redis_server)

    class Request:
        pass

    async def run() -> None:
        flusher = asyncio.create_task(a.keep_alive())
        token = await a.acquire("turn:s", 1)
        assert token is not None
        req = Request()
        weakref.finalize(req, a.release, "turn:s", token)
        del req
        gc.collect()
        assert a.held() == frozenset()
        await asyncio.sleep(4 * RedisLeases.FLUSH_SECONDS)
        assert await b.acquire("turn:s", 1) is not None
        flusher.cancel()

    asyncio.run(run())


def test_an_unreachable_redis_is_an_error_not_a_hang() -> None:
    leases = RedisLeases(connect("redis://127.0.0.1:1/0"), prefix="x:", ttl_seconds=30)
    with pytest.raises(SharedStateError):
        asyncio.run(leases.acquire("turn:s", 1))
    leases.close()


def test_local_leases_count_per_key() -> None:
    leases: LeaseTable = LocalLeases()

    async def run() -> None:
        token = await leases.acquire("turn:s", 1)
        assert token is not None
        assert await leases.acquire("turn:s", 1) is None
        assert leases.held() == frozenset({"turn:s"})
        leases.release("turn:s", token)
        leases.release("turn:s", token)  # twice is harmless
        assert leases.held() == frozenset()
        assert await leases.acquire("turn:s", 1) is not None

    asyncio.run(run())
