"""The session store contract, on both stores: SQLite (one host) and Redis (replicas)."""

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from gemma_worker.cluster.redis_client import connect
from gemma_worker.sessions.redis_store import RedisSessionStore
from gemma_worker.sessions.sqlite_store import SQLiteSessionStore
from gemma_worker.sessions.store import SessionStore, Turn
from tests.programs import RedisServer

MakeStore = Callable[..., SessionStore]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    """A factory of stores; two stores made by one test share their data (a restart, or a
    second replica)."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:"

    def make(ttl: float = 3600, max_sessions: int = 100) -> SessionStore:
        if request.param == "sqlite":
            return SQLiteSessionStore(
                tmp_path / "data" / "sessions.db", ttl_seconds=ttl, max_sessions=max_sessions
            )
        redis: RedisServer = request.getfixturevalue("redis_server")
        return RedisSessionStore(
            connect(redis.url), prefix=prefix, ttl_seconds=ttl, max_sessions=max_sessions
        )

    return make


def test_turns_are_kept_in_order_and_counted(make_store: MakeStore) -> None:
    store = make_store()
    store.create("s1", system="Be brief.", format="chat")
    store.append("s1", Turn("hi", "hello", 3, 2))
    store.append("s1", Turn("and?", "that's all", 9, 3))
    turns = store.turns("s1")
    assert turns is not None
    assert [(t.user, t.assistant) for t in turns] == [("hi", "hello"), ("and?", "that's all")]
    info = store.get("s1")
    assert info is not None
    # tokens: the context the last turn filled (its prompt includes the history)
    assert (info.turns, info.tokens, info.system, info.format) == (2, 12, "Be brief.", "chat")


def test_sessions_survive_a_restart(make_store: MakeStore) -> None:
    store = make_store()
    store.create("keep")
    store.append("keep", Turn("remember me", "I will"))
    store.close()
    again = make_store()
    assert again.turns("keep") == [Turn("remember me", "I will", 0, 0)]


def test_unknown_and_deleted_sessions(make_store: MakeStore) -> None:
    store = make_store()
    assert store.get("nope") is None
    assert store.turns("nope") is None
    with pytest.raises(KeyError):
        store.append("nope", Turn("x", "y"))
    store.create("s")
    store.append("s", Turn("x", "y"))
    assert store.delete("s")
    assert not store.delete("s")
    assert store.get("s") is None
    with pytest.raises(KeyError):
        store.append("s", Turn("x", "y"))


def test_duplicate_id_is_refused(make_store: MakeStore) -> None:
    store = make_store()
    store.create("s")
    with pytest.raises(ValueError, match="exists"):
        store.create("s")


def test_owners_do_not_see_each_others_sessions(make_store: MakeStore) -> None:
    store = make_store()
    store.create("a", owner="key-a")
    assert store.get("a", owner="key-b") is None
    assert store.turns("a", owner="key-b") is None
    assert not store.delete("a", owner="key-b")
    with pytest.raises(KeyError):
        store.append("a", Turn("x", "y"), owner="key-b")
    assert [s.id for s in store.list_sessions(owner="key-a")] == ["a"]
    assert store.list_sessions(owner="key-b") == []


def test_expiry_by_idle_ttl_and_by_count(make_store: MakeStore) -> None:
    store = make_store(ttl=60, max_sessions=2)
    for name in ("old", "mid", "new", "newest"):
        store.create(name)
        time.sleep(0.01)
    now = time.time()
    # nothing idle for 60 s yet; the two least recently used go over the count limit
    assert sorted(store.expire(now)) == ["mid", "old"]
    assert [s.id for s in store.list_sessions()] == ["newest", "new"]
    assert store.count() == 2
    # using a session makes it recent; an hour later every session is idle
    store.append("new", Turn("x", "y"))
    assert store.list_sessions()[0].id == "new"
    assert sorted(store.expire(now + 3600)) == ["new", "newest"]
    assert store.list_sessions() == []
    assert store.turns("new") is None


def test_concurrent_appends_are_not_interleaved(make_store: MakeStore) -> None:
    store = make_store()
    store.create("s")

    def writer(tag: str) -> None:
        for i in range(50):
            store.append("s", Turn(f"{tag}{i}", f"{tag}{i}"))

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    turns = store.turns("s")
    assert turns is not None and len(turns) == 100
    assert all(t.user == t.assistant for t in turns)
    # each writer's turns keep their own order
    for tag in "ab":
        assert [t.user for t in turns if t.user[0] == tag] == [f"{tag}{i}" for i in range(50)]


def test_records_are_owned_replaced_deleted_and_shared(make_store: MakeStore) -> None:
    store, replica = make_store(), make_store()
    store.put_record("response", "resp_1", '{"v": 1}', owner="alice")
    assert replica.get_record("response", "resp_1", owner="alice") == '{"v": 1}'
    assert store.get_record("response", "resp_1", owner="bob") is None
    assert store.get_record("response", "resp_1", owner=None) is None
    assert store.get_record("other-kind", "resp_1", owner="alice") is None
    store.put_record("response", "resp_1", '{"v": 2}', owner="alice")
    assert store.get_record("response", "resp_1", owner="alice") == '{"v": 2}'
    assert not store.delete_record("response", "resp_1", owner="bob")
    assert replica.delete_record("response", "resp_1", owner="alice")
    assert store.get_record("response", "resp_1", owner="alice") is None
    assert not store.delete_record("response", "resp_1", owner="alice")


def test_records_expire_with_the_ttl(make_store: MakeStore) -> None:
    store = make_store(ttl=0.3)
    store.put_record("response", "resp_2", "{}", owner=None)
    assert store.get_record("response", "resp_2", owner=None) == "{}"
    time.sleep(0.5)
    store.expire()
    assert store.get_record("response", "resp_2", owner=None) is None


def test_sqlite_keeps_at_most_the_session_count_of_records(tmp_path: Path) -> None:
    store = SQLiteSessionStore(tmp_path / "s.db", ttl_seconds=3600, max_sessions=2)
    for i in range(4):
        store.put_record("response", f"resp_{i}", "{}", owner=None)
        time.sleep(0.01)
    store.expire()
    kept = [i for i in range(4) if store.get_record("response", f"resp_{i}", owner=None)]
    assert kept == [2, 3]


def test_redis_expiry_is_the_ttl(redis_server: RedisServer) -> None:
    """Sessions in Redis expire by themselves: no sweep is needed for them to go."""
    store = RedisSessionStore(
        connect(redis_server.url), prefix=f"ttl-{uuid.uuid4().hex[:8]}:", ttl_seconds=1.0,
        max_sessions=10,
    )  # fmt: skip
    store.create("brief")
    store.append("brief", Turn("x", "y"))
    assert store.get("brief") is not None
    time.sleep(1.3)
    assert store.get("brief") is None
    assert store.turns("brief") is None
    assert store.count() == 0
    assert store.expire() == ["brief"]  # the sweep only tidies the index
