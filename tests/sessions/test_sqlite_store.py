import threading
import time
from pathlib import Path

import pytest

from gemma_worker.sessions.sqlite_store import SQLiteSessionStore
from gemma_worker.sessions.store import Turn


def make_store(tmp_path: Path, ttl: float = 3600, max_sessions: int = 100) -> SQLiteSessionStore:
    return SQLiteSessionStore(
        tmp_path / "data" / "sessions.db", ttl_seconds=ttl, max_sessions=max_sessions
    )


def test_turns_are_kept_in_order_and_counted(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.create("s1", system="Be brief.")
    store.append("s1", [Turn("user", "hi", 3), Turn("assistant", "hello", 2)])
    store.append("s1", [Turn("user", "and?", 4), Turn("assistant", "that's all", 3)])
    turns = store.turns("s1")
    assert turns is not None
    assert [t.content for t in turns] == ["hi", "hello", "and?", "that's all"]
    info = store.get("s1")
    assert info is not None
    assert (info.turns, info.tokens, info.system) == (4, 12, "Be brief.")


def test_sessions_survive_a_restart(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.create("keep")
    store.append("keep", [Turn("user", "remember me")])
    store.close()
    again = make_store(tmp_path)
    turns = again.turns("keep")
    assert turns == [Turn("user", "remember me", 0)]


def test_unknown_and_deleted_sessions(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.get("nope") is None
    assert store.turns("nope") is None
    with pytest.raises(KeyError):
        store.append("nope", [Turn("user", "x")])
    store.create("s")
    store.append("s", [Turn("user", "x")])
    assert store.delete("s")
    assert not store.delete("s")
    assert store.get("s") is None
    with pytest.raises(KeyError):
        store.append("s", [Turn("user", "y")])


def test_duplicate_id_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.create("s")
    with pytest.raises(ValueError, match="exists"):
        store.create("s")


def test_owners_do_not_see_each_others_sessions(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.create("a", owner="key-a")
    assert store.get("a", owner="key-b") is None
    assert store.turns("a", owner="key-b") is None
    assert not store.delete("a", owner="key-b")
    assert [s.id for s in store.list(owner="key-a")] == ["a"]
    assert store.list(owner="key-b") == []


def test_expiry_by_idle_ttl_and_by_count(tmp_path: Path) -> None:
    store = make_store(tmp_path, ttl=60, max_sessions=2)
    for name in ("old", "mid", "new", "newest"):
        store.create(name)
        time.sleep(0.01)
    now = time.time()
    # nothing idle for 60 s yet; the two least recently used go over the count limit
    assert store.expire(now) == 2
    assert [s.id for s in store.list()] == ["newest", "new"]
    # using a session makes it recent; an hour later every session is idle
    store.append("new", [Turn("user", "x")])
    assert store.list()[0].id == "new"
    assert store.expire(now + 3600) == 2
    assert store.list() == []


def test_concurrent_appends_are_not_interleaved(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.create("s")

    def writer(tag: str) -> None:
        for i in range(50):
            store.append("s", [Turn("user", f"{tag}{i}"), Turn("assistant", f"{tag}{i}")])

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    turns = store.turns("s")
    assert turns is not None and len(turns) == 200
    # every (user, assistant) pair stays together
    for user, answer in zip(turns[::2], turns[1::2], strict=True):
        assert (user.role, answer.role) == ("user", "assistant")
        assert user.content == answer.content
