"""The embedded session store: one SQLite file, safe to share between threads."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import cast

from gemma_worker.private_files import private_dir, private_file
from gemma_worker.sessions.store import SessionFormat, SessionInfo, Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner TEXT,
    system TEXT,
    format TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    n_turns INTEGER NOT NULL DEFAULT 0,
    n_tokens INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    title TEXT
);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    user_text TEXT NOT NULL,
    assistant_text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    owner TEXT,
    data TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS records_updated ON records(updated);
"""

_COLUMNS = "id, owner, system, format, created, updated, n_turns, n_tokens, model, title"
#: Columns added after the first schema (a database made by an older worker gains them).
_ADDED = (("model", "TEXT"), ("title", "TEXT"))

_Row = tuple[str, str | None, str | None, str, float, float, int, int, str | None, str | None]


def _info(row: _Row) -> SessionInfo:
    sid, owner, system, fmt, created, updated, n_turns, n_tokens, model, title = row
    return SessionInfo(
        sid,
        owner,
        system,
        cast(SessionFormat, fmt),
        created,
        updated,
        n_turns,
        n_tokens,
        model,
        title,
    )


class SQLiteSessionStore:
    """:class:`~gemma_worker.sessions.store.SessionStore` on SQLite (WAL mode).

    ``ttl_seconds`` and ``max_sessions`` bound what :meth:`expire` keeps. Sessions survive a
    restart: a new store on the same ``path`` sees them.
    """

    def __init__(self, path: Path | str, *, ttl_seconds: float, max_sessions: int) -> None:
        if str(path) != ":memory:":
            # the folder may be someone else's (GEMMA_SESSION_DB): only made, never changed
            private_dir(Path(path).parent, tighten=False)
            private_file(Path(path))  # SQLite makes its -wal and -shm files with this mode
            for older in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                if older.exists():
                    private_file(older)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
            for name, kind in _ADDED:
                if name not in have:
                    self._db.execute(f"ALTER TABLE sessions ADD COLUMN {name} {kind}")

    def _owned(self, session_id: str, owner: str | None) -> SessionInfo | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner)
        ).fetchone()
        return None if row is None else _info(row)

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
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO sessions (id, owner, system, format, created, updated, model, "
                    "title) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (session_id, owner, system, format, now, now, model, title),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"session {session_id} exists") from exc
        return SessionInfo(session_id, owner, system, format, now, now, 0, 0, model, title)

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
                "SELECT user_text, assistant_text, prompt_tokens, completion_tokens "
                "FROM turns WHERE session_id = ? ORDER BY seq",
                (session_id,),
            ).fetchall()
        return [Turn(*row) for row in rows]

    def append(self, session_id: str, turn: Turn, *, owner: str | None = None) -> None:
        """Add a turn at the end, atomically; ``KeyError`` if the session is gone."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT n_turns FROM sessions WHERE id = ? AND owner IS ?",
                    (session_id, owner),
                ).fetchone()
                if row is None:
                    raise KeyError(session_id)
                self._db.execute(
                    "INSERT INTO turns (session_id, seq, user_text, assistant_text, "
                    "prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        session_id,
                        int(row[0]),
                        turn.user,
                        turn.assistant,
                        turn.prompt_tokens,
                        turn.completion_tokens,
                    ),
                )
                self._db.execute(
                    "UPDATE sessions SET n_turns = n_turns + 1, n_tokens = ?, updated = ? "
                    "WHERE id = ?",
                    (turn.prompt_tokens + turn.completion_tokens, time.time(), session_id),
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

    def list_sessions(self, *, owner: str | None = None, limit: int = 100) -> list[SessionInfo]:
        """Sessions, most recently used first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE owner IS ? ORDER BY updated DESC LIMIT ?",
                (owner, limit),
            ).fetchall()
        return [_info(r) for r in rows]

    def count(self) -> int:
        """Number of sessions (all owners)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])

    def expire(self, now: float | None = None, *, keep: Collection[str] = ()) -> list[str]:
        """Drop sessions idle past the TTL, then the least recently used beyond the maximum;
        sessions in ``keep`` (those answering a turn now) are spared."""
        cutoff = (time.time() if now is None else now) - self.ttl_seconds
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT id FROM sessions WHERE updated < ? UNION "
                    "SELECT id FROM (SELECT id FROM sessions ORDER BY updated DESC "
                    "LIMIT -1 OFFSET ?)",
                    (cutoff, self.max_sessions),
                ).fetchall()
                ids = [r[0] for r in rows if r[0] not in keep]
                self._db.executemany("DELETE FROM sessions WHERE id = ?", [(i,) for i in ids])
                self._db.execute(
                    "DELETE FROM records WHERE updated < ? OR rowid IN (SELECT rowid FROM "
                    "records ORDER BY updated DESC LIMIT -1 OFFSET ?)",
                    (cutoff, self.max_sessions),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return ids

    def put_record(self, kind: str, record_id: str, data: str, *, owner: str | None) -> None:
        """Keep ``data`` as the record ``record_id`` of ``kind`` (expires with the TTL)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO records (kind, id, owner, data, updated) "
                "VALUES (?, ?, ?, ?, ?)",
                (kind, record_id, owner, data, time.time()),
            )

    def get_record(self, kind: str, record_id: str, *, owner: str | None) -> str | None:
        """The record, or ``None`` when unknown, expired or another owner's."""
        cutoff = time.time() - self.ttl_seconds
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM records WHERE kind = ? AND id = ? AND owner IS ? "
                "AND updated >= ?",
                (kind, record_id, owner, cutoff),
            ).fetchone()
        return None if row is None else str(row[0])

    def delete_record(self, kind: str, record_id: str, *, owner: str | None) -> bool:
        """Remove the record; whether it existed (for this owner)."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM records WHERE kind = ? AND id = ? AND owner IS ?",
                (kind, record_id, owner),
            )
            return cur.rowcount > 0

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
