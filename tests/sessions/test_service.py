"""The session service over Redis, as two replicas share it: one turn at a time per session,
and a finished turn frees its session at once for a turn on any replica."""

from __future__ import annotations

import asyncio
import uuid

from gemma_worker.cluster.leases import RedisLeases
from gemma_worker.cluster.redis_client import connect
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.sessions.redis_store import RedisSessionStore
from gemma_worker.sessions.service import SessionService, TurnRequest
from tests.programs import RedisServer


def replica(redis: RedisServer, prefix: str) -> SessionService:
    store = RedisSessionStore(connect(redis.url), prefix=prefix, ttl_seconds=600, max_sessions=100)
    leases = RedisLeases(connect(redis.url), prefix=prefix, ttl_seconds=30)
    return SessionService(store, lambda _sid: None, leases)


def test_a_finished_turn_frees_its_session_on_every_replica(redis_server: RedisServer) -> None:
    prefix = f"svc-{uuid.uuid4().hex[:8]}:"
    a, b = replica(redis_server, prefix), replica(redis_server, prefix)
    raw = connect(redis_server.url)

    async def run() -> None:
        first = await a.begin(TurnRequest(input="hi"), "plain")
        await a.record(first, "hello", 2, 1)
        await a.end_turn(first)
        sid = first.session_id
        for turn in range(5):
            here, there = (a, b) if turn % 2 else (b, a)
            plan = await here.begin(TurnRequest(input=f"turn {turn}", session_id=sid), "plain")
            assert len(plan.conversation.history) == turn + 1
            try:
                await there.begin(TurnRequest(input="clash", session_id=sid), "plain")
                raise AssertionError("two replicas ran two turns of one session")
            except WorkerError as exc:
                assert exc.code is ErrorCode.SESSION_BUSY
            await here.record(plan, f"answer {turn}", 5, 2)
            await here.end_turn(plan)  # what the answer's last event waits for
            assert raw.zcard(f"{prefix}lease:turn:{sid}") == 0, "released after end_turn"
        # ending a turn twice, or releasing it after, is harmless
        await here.end_turn(plan)
        plan.release()

    asyncio.run(run())
