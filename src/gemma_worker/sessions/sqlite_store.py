"""The embedded session store: one SQLite file, safe to share between threads."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from gemma_worker.sessions.store import SessionInfo, Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner TEXT,
    system TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    n_turns INTEGER NOT NULL DEFAULT 0,
    n_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
);
"""

_COLUMNS = "id, owner, system, created, updated, n_turns, n_tokens"


def _info(row: tuple[str, str | None, str | None, float, float, int, int]) -> SessionInfo:
    return SessionInfo(*row)


class SQLiteSessionStore:
    """:class:`~gemma_worker.sessions.store.SessionStore` on SQLite (WAL mode).

    ``ttl_seconds`` and ``max_sessions`` bound what :meth:`expire` keeps. Sessions survive a
    restart: a new store on the same ``path`` sees them.
    """

    def __init__(self, path: Path | str, *, ttl_seconds: float, max_sessions: int) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)

    def _owned(self, session_id: str, owner: str | None) -> SessionInfo | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner)
        ).fetchone()
        return None if row is None else _info(row)

    def create(
        self, session_id: str, *, owner: str | None = None, system: str | None = None
    ) -> SessionInfo:
        """Make an empty session (``ValueError`` if the id exists)."""
        now = time.time()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO sessions (id, owner, system, created, updated) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (session_id, owner, system, now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"session {session_id} exists") from exc
        return SessionInfo(session_id, owner, system, now, now, 0, 0)

    def get(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None:
        """The session, or ``None`` when unknown (or another owner's)."""
        with self._lock:
            return self._owned(session_id, owner)

    def turns(self, session_id: str, *, owner: str | None = None) -> list[Turn] | None:
        """All turns in order, or ``None`` when the session is unknown."""
        with self._lock:
            if self._owned(session_id, owner) is None:
                return None
            rows = self._db.execute(
                "SELECT role, content, tokens FROM turns WHERE session_id = ? ORDER BY seq",
                (session_id,),
            ).fetchall()
        return [Turn(role, content, tokens) for role, content, tokens in rows]

    def append(self, session_id: str, turns: Sequence[Turn]) -> None:
        """Add turns at the end, atomically; ``KeyError`` if the session is gone."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT n_turns FROM sessions WHERE id = ?", (session_id,)
                ).fetchone()
                if row is None:
                    raise KeyError(session_id)
                start = int(row[0])
                self._db.executemany(
                    "INSERT INTO turns (session_id, seq, role, content, tokens) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (session_id, start + i, t.role, t.content, t.tokens)
                        for i, t in enumerate(turns)
                    ],
                )
                self._db.execute(
                    "UPDATE sessions SET n_turns = n_turns + ?, n_tokens = n_tokens + ?, "
                    "updated = ? WHERE id = ?",
                    (len(turns), sum(t.tokens for t in turns), time.time(), session_id),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def delete(self, session_id: str, *, owner: str | None = None) -> bool:
        """Remove the session and its turns; whether it existed."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner)
            )
            return cur.rowcount > 0

    def list(self, *, owner: str | None = None, limit: int = 100) -> list[SessionInfo]:
        """Sessions, most recently used first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE owner IS ? ORDER BY updated DESC LIMIT ?",
                (owner, limit),
            ).fetchall()
        return [_info(r) for r in rows]

    def expire(self, now: float | None = None) -> int:
        """Drop sessions idle past the TTL, then the least recently used beyond the maximum."""
        cutoff = (time.time() if now is None else now) - self.ttl_seconds
        with self._lock:
            removed = self._db.execute("DELETE FROM sessions WHERE updated < ?", (cutoff,)).rowcount
            removed += self._db.execute(
                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions "
                "ORDER BY updated DESC LIMIT -1 OFFSET ?)",
                (self.max_sessions,),
            ).rowcount
        return int(removed)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
