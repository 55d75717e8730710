"""The session store seam: what the API needs from any store (SQLite now, Redis later)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation; ``tokens`` is its prompt-token count when known."""

    role: Role
    content: str
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session's metadata (times are Unix seconds)."""

    id: str
    owner: str | None
    system: str | None
    created: float
    updated: float
    turns: int
    tokens: int


class SessionStore(Protocol):
    """Durable conversation history. ``owner`` scopes every lookup: a session made by one
    owner does not exist for another. Methods are blocking; call them off the event loop."""

    def create(
        self, session_id: str, *, owner: str | None = None, system: str | None = None
    ) -> SessionInfo:
        """Make an empty session (``ValueError`` if the id exists)."""
        ...

    def get(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None:
        """The session, or ``None`` when unknown (or another owner's)."""
        ...

    def turns(self, session_id: str, *, owner: str | None = None) -> list[Turn] | None:
        """All turns in order, or ``None`` when the session is unknown."""
        ...

    def append(self, session_id: str, turns: Sequence[Turn]) -> None:
        """Add turns at the end, atomically; ``KeyError`` if the session is gone."""
        ...

    def delete(self, session_id: str, *, owner: str | None = None) -> bool:
        """Remove the session and its turns; whether it existed."""
        ...

    def list(self, *, owner: str | None = None, limit: int = 100) -> list[SessionInfo]:
        """Sessions, most recently used first."""
        ...

    def expire(self, now: float | None = None) -> int:
        """Drop sessions idle longer than the TTL, then the least recently used beyond the
        maximum count; return how many were removed."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...
