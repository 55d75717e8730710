"""The shared session store: sessions in Redis, for several replicas behind one balancer.

Layout under ``prefix`` (default ``gemma:``):

- ``session:<id>``: a hash of the session's metadata; ``turns:<id>``: a list of its turns as
  JSON. Both expire ``ttl_seconds`` after the last turn (Redis expiry is the TTL).
- ``sessions``: a sorted set of every session id by last use (for the cap and the sweep);
  ``owned:<owner>``: the same, per owner (for listing); ``owners``: id -> owner.

Writes that touch several keys run as Lua scripts, so they are atomic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar, cast

from redis import Redis, RedisError

from gemma_worker.cluster.errors import SharedStateError
from gemma_worker.sessions.store import SessionFormat, SessionInfo, Turn

T = TypeVar("T")

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'system', ARGV[2], 'format', ARGV[3],
           'created', ARGV[4], 'updated', ARGV[4], 'turns', 0, 'tokens', 0,
           'model', ARGV[7], 'title', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
redis.call('HSET', KEYS[4], ARGV[6], ARGV[1])
return 1
"""

_APPEND = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'turns', 1)
redis.call('HSET', KEYS[1], 'tokens', ARGV[3], 'updated', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[6])
return 1
"""

# KEYS: session, turns, sessions, owners, owned. ARGV: id, owner or '' (any owner).
_DELETE = """
local owner = redis.call('HGET', KEYS[4], ARGV[1])
if ARGV[2] ~= '' and owner ~= ARGV[2] then return 0 end
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if owner then redis.call('ZREM', KEYS[5] .. owner, ARGV[1]) end
return existed
"""


# KEYS: record. ARGV: owner.
_DELETE_RECORD = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def _owner(owner: str | None) -> str:
    return json.dumps(owner)


class RedisSessionStore:
    """:class:`~gemma_worker.sessions.store.SessionStore` on Redis.

    Every method raises :class:`SharedStateError` when Redis cannot be reached.
    """

    def __init__(
        self, client: Redis, *, prefix: str, ttl_seconds: float, max_sessions: int
    ) -> None:
        self._r = client
        self._p = prefix
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._create = client.register_script(_CREATE)
        self._append = client.register_script(_APPEND)
        self._delete = client.register_script(_DELETE)
        self._delete_record = client.register_script(_DELETE_RECORD)

    def _session(self, sid: str) -> str:
        return f"{self._p}session:{sid}"

    def _turns(self, sid: str) -> str:
        return f"{self._p}turns:{sid}"

    def _owned(self, owner: str | None) -> str:
        return f"{self._p}owned:{_owner(owner)}"

    @property
    def _all(self) -> str:
        return f"{self._p}sessions"

    @property
    def _owners(self) -> str:
        return f"{self._p}owners"

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RedisError as exc:
            raise SharedStateError(f"session store: {exc}") from exc

    def create(
        self,
        session_id: str,
        *,
        owner: str | None = None,
        system: str | None = None,
        format: SessionFormat = "plain",
        model: str | None = None,
        title: str | None = None,
    ) -> SessionInfo:
        """Make an empty session (``ValueError`` if the id exists)."""
        now = time.time()
        made = self._call(
            lambda: self._create(
                keys=[self._session(session_id), self._all, self._owned(owner), self._owners],
                args=[
                    _owner(owner),
                    json.dumps(system),
                    format,
                    now,
                    self._ttl_ms,
                    session_id,
                    json.dumps(model),
                    json.dumps(title),
                ],
            )
        )
        if not made:
            raise ValueError(f"session {session_id} exists")
        return SessionInfo(session_id, owner, system, format, now, now, 0, 0, model, title)

    def _info(
        self, session_id: str, fields: dict[str, str], owner: str | None
    ) -> SessionInfo | None:
        if not fields or fields.get("owner") != _owner(owner):
            return None
        return SessionInfo(
            session_id,
            owner,
            json.loads(fields["system"]),
            cast(SessionFormat, fields["format"]),
            float(fields["created"]),
            float(fields["updated"]),
            int(fields["turns"]),
            int(fields["tokens"]),
            json.loads(fields.get("model", "null")),
            json.loads(fields.get("title", "null")),
        )

    def get(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None:
        """The session, or ``None`` when unknown (or another owner's)."""
        fields = self._call(lambda: self._r.hgetall(self._session(session_id)))
        return self._info(session_id, cast(dict[str, str], fields), owner)

    def turns(self, session_id: str, *, owner: str | None = None) -> list[Turn] | None:
        """All turns in order, or ``None`` when the session is unknown."""

        def read() -> list[Any]:
            pipe = self._r.pipeline(transaction=True)
            pipe.hget(self._session(session_id), "owner")
            pipe.lrange(self._turns(session_id), 0, -1)
            return pipe.execute()

        found, rows = self._call(read)
        if found != _owner(owner):
            return None
        return [Turn(*json.loads(row)) for row in rows]

    def append(self, session_id: str, turn: Turn, *, owner: str | None = None) -> None:
        """Add a turn at the end, atomically; ``KeyError`` if the session is gone."""
        now = time.time()
        row = json.dumps([turn.user, turn.assistant, turn.prompt_tokens, turn.completion_tokens])
        done = self._call(
            lambda: self._append(
                keys=[
                    self._session(session_id),
                    self._turns(session_id),
                    self._all,
                    self._owned(owner),
                ],
                args=[
                    _owner(owner),
                    row,
                    turn.prompt_tokens + turn.completion_tokens,
                    now,
                    self._ttl_ms,
                    session_id,
                ],
            )
        )
        if not done:
            raise KeyError(session_id)

    def _drop(self, session_id: str, owner: str | None, *, any_owner: bool = False) -> bool:
        keys = [
            self._session(session_id),
            self._turns(session_id),
            self._all,
            self._owners,
            f"{self._p}owned:",
        ]
        args = [session_id, "" if any_owner else _owner(owner)]
        return bool(self._call(lambda: self._delete(keys=keys, args=args)))

    def delete(self, session_id: str, *, owner: str | None = None) -> bool:
        """Remove the session and its turns; whether it existed."""
        return self._drop(session_id, owner)

    def list_sessions(self, *, owner: str | None = None, limit: int = 100) -> list[SessionInfo]:
        """Sessions, most recently used first."""
        cutoff = time.time() - self.ttl_seconds

        def read() -> list[tuple[str, dict[str, str]]]:
            ids = cast(
                list[str], self._r.zrevrangebyscore(self._owned(owner), "+inf", cutoff, 0, limit)
            )
            pipe = self._r.pipeline(transaction=False)
            for sid in ids:
                pipe.hgetall(self._session(sid))
            return list(zip(ids, pipe.execute(), strict=True))

        infos = (self._info(sid, fields, owner) for sid, fields in self._call(read))
        return [info for info in infos if info is not None]

    def count(self) -> int:
        """Number of sessions (all owners) not past their TTL."""
        cutoff = time.time() - self.ttl_seconds
        return int(self._call(lambda: self._r.zcount(self._all, cutoff, "+inf")))

    def expire(self, now: float | None = None, *, keep: Collection[str] = ()) -> list[str]:
        """Clean up after sessions Redis has expired, and drop the least recently used beyond
        the maximum, except those in ``keep``; return the ids removed."""
        cutoff = (time.time() if now is None else now) - self.ttl_seconds

        def stale() -> list[str]:
            old = self._r.zrangebyscore(self._all, "-inf", f"({cutoff}")
            extra = self._r.zrevrange(self._all, self.max_sessions, -1)
            return list(dict.fromkeys([*old, *extra]))

        ids = [sid for sid in self._call(stale) if sid not in keep]
        for sid in ids:
            self._drop(sid, None, any_owner=True)
        return ids

    def _record(self, kind: str, record_id: str) -> str:
        return f"{self._p}record:{kind}:{record_id}"

    def put_record(self, kind: str, record_id: str, data: str, *, owner: str | None) -> None:
        """Keep ``data`` as the record ``record_id`` of ``kind`` (Redis expires it)."""
        key = self._record(kind, record_id)

        def write() -> None:
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping={"owner": _owner(owner), "data": data})
            pipe.pexpire(key, self._ttl_ms)
            pipe.execute()

        self._call(write)

    def get_record(self, kind: str, record_id: str, *, owner: str | None) -> str | None:
        """The record, or ``None`` when unknown, expired or another owner's."""
        fields = self._call(lambda: self._r.hgetall(self._record(kind, record_id)))
        if not fields or fields.get("owner") != _owner(owner):
            return None
        return str(fields["data"])

    def delete_record(self, kind: str, record_id: str, *, owner: str | None) -> bool:
        """Remove the record; whether it existed (for this owner)."""
        keys, args = [self._record(kind, record_id)], [_owner(owner)]
        return bool(self._call(lambda: self._delete_record(keys=keys, args=args)))

    def close(self) -> None:
        """Close the connection pool."""
        self._r.close()
