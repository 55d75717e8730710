"""The session store seam: what the API needs from any store (SQLite now, Redis later)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from gemma_worker.core.conversation import ConversationFormat, Turn

#: How a session's prompt is built: a running plain-text transcript, or chat turns.
SessionFormat = ConversationFormat

__all__ = ["TITLE_CHARS", "SessionFormat", "SessionInfo", "SessionStore", "Turn", "title_of"]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session's metadata (times are Unix seconds). ``tokens`` is the context the last turn
    filled: its prompt plus its answer."""

    id: str
    owner: str | None
    system: str | None
    format: SessionFormat
    created: float
    updated: float
    turns: int
    tokens: int
    #: The model that answers it (``None``: a session from before models were named).
    model: str | None = None
    #: The start of its first message (what a sessions list shows).
    title: str | None = None


#: Longest title kept (the start of a session's first message).
TITLE_CHARS = 80


def title_of(text: str) -> str:
    """A session's title: the start of its first message, on one line."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


class SessionStore(Protocol):
    """Durable conversation history. ``owner`` scopes every lookup: a session made by one
    owner does not exist for another. Methods are blocking; call them off the event loop."""

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
        ...

    def get(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None:
        """The session, or ``None`` when unknown (or another owner's)."""
        ...

    def turns(self, session_id: str, *, owner: str | None = None) -> list[Turn] | None:
        """All turns in order, or ``None`` when the session is unknown."""
        ...

    def append(self, session_id: str, turn: Turn, *, owner: str | None = None) -> None:
        """Add a turn at the end, atomically; ``KeyError`` if the session is gone."""
        ...

    def delete(self, session_id: str, *, owner: str | None = None) -> bool:
        """Remove the session and its turns; whether it existed."""
        ...

    def list_sessions(self, *, owner: str | None = None, limit: int = 100) -> list[SessionInfo]:
        """Sessions, most recently used first."""
        ...

    def count(self) -> int:
        """Number of sessions (all owners)."""
        ...

    def expire(self, now: float | None = None, *, keep: Collection[str] = ()) -> list[str]:
        """Drop sessions idle longer than the TTL, then the least recently used beyond the
        maximum count, except those in ``keep``; return the ids removed."""
        ...

    def put_record(self, kind: str, record_id: str, data: str, *, owner: str | None) -> None:
        """Keep ``data`` (a JSON document, e.g. a stored Responses API answer) as the record
        ``record_id`` of ``kind``, replacing any; it expires like an idle session (and in
        SQLite, beyond the session count, the least recently written go first)."""
        ...

    def get_record(self, kind: str, record_id: str, *, owner: str | None) -> str | None:
        """The record, or ``None`` when unknown, expired or another owner's."""
        ...

    def delete_record(self, kind: str, record_id: str, *, owner: str | None) -> bool:
        """Remove the record; whether it existed (for this owner)."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...
