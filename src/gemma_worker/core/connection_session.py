"""Which session each request on a WebSocket connection runs in (sans-I/O).

A connection is a session, as in the FazAI worker's original protocol: a request that names
none continues the connection's current session, and the first such request starts it (its id
is made here, so requests sent back to back share it). A request naming a session continues
that one, which becomes current; ``new_session`` starts a fresh current one; ``stateless``
stays out of all this. A connection opened as ``/ws?session_id=<id>`` is bound to that session.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_worker.core.ids import new_id
from gemma_worker.core.request import ExecuteRequest, route_session

_WHERE = "the connection's session_id"


@dataclass(frozen=True, slots=True)
class Routed:
    """A request with the session it runs in filled in; ``may_create``: that session is the
    connection's own and may not exist yet (its first turn starts it)."""

    request: ExecuteRequest
    may_create: bool


class ConnectionSession:
    """The connection's current session and how requests map onto it."""

    def __init__(self, routed: str | None = None) -> None:
        """``routed``: the session named in the connection's URL (binds the connection)."""
        self.current: str | None = routed
        self._bound = routed is not None
        self._own = False  # ``current`` was made up here and may not exist yet

    def route(self, req: ExecuteRequest) -> Routed:
        """The session ``req`` runs in; ``INVALID_REQUEST`` when it contradicts the
        connection's binding."""
        if req.stateless:
            return Routed(req, may_create=False)
        if self._bound:
            return Routed(route_session(req, self.current, _WHERE), may_create=False)
        if req.new_session:
            fresh = req.model_copy(update={"session_id": new_id(), "new_session": False})
            return Routed(fresh, may_create=True)
        if req.session_id is None:
            if self.current is None:
                self.current, self._own = new_id(), True
            continued = req.model_copy(update={"session_id": self.current})
            return Routed(continued, may_create=self._own)
        if req.session_id == self.current:
            return Routed(req, may_create=self._own)
        return Routed(req, may_create=False)

    def stored(self, session_id: str) -> None:
        """A turn of ``session_id`` was stored: it exists, so from now on it is never created
        again under its id (deleted or expired, it is ``SESSION_NOT_FOUND``)."""
        if session_id == self.current:
            self._own = False

    def started(self, routed: Routed) -> None:
        """``routed`` was accepted: its session is the connection's current one from now on."""
        session_id = routed.request.session_id
        if routed.request.stateless or session_id is None:
            return
        self.current, self._own = session_id, routed.may_create
