"""How requests on one WebSocket connection map onto sessions (plain data, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from gemma_worker.core.connection_session import ConnectionSession
from gemma_worker.core.errors import WorkerError
from gemma_worker.core.request import ExecuteRequest


def req(**fields: Any) -> ExecuteRequest:
    return ExecuteRequest(input="hi", **fields)


def run(conn: ConnectionSession, **fields: Any) -> tuple[str | None, bool]:
    routed = conn.route(req(**fields))
    conn.started(routed)
    return routed.request.session_id, routed.may_create


def test_requests_without_an_id_share_the_connections_session() -> None:
    conn = ConnectionSession()
    first, create = run(conn)
    assert first is not None and create  # made here: its first turn starts it
    again = conn.route(req())  # sent before the first one finished: the same session
    assert again.request.session_id == first and again.may_create
    assert ConnectionSession().route(req()).request.session_id != first


def test_once_a_turn_is_stored_the_session_is_never_made_again() -> None:
    conn = ConnectionSession()
    first, create = run(conn)
    assert create
    conn.stored("some-other-session")  # not the current one: no change
    assert conn.route(req()).may_create
    assert first is not None
    conn.stored(first)
    assert conn.route(req()).may_create is False
    assert run(conn, new_session=True)[1]  # a fresh one may be made again


def test_a_named_session_becomes_current() -> None:
    conn = ConnectionSession()
    own, _ = run(conn)
    named, create = run(conn, session_id="other-session")
    assert named == "other-session" and not create  # must exist: never created by naming it
    assert run(conn) == ("other-session", False)
    assert run(conn, session_id=own) == (own, False)  # once left, no longer the connection's own


def test_new_session_switches_and_stateless_leaves_it_alone() -> None:
    conn = ConnectionSession()
    first, _ = run(conn)
    fresh, create = run(conn, new_session=True)
    assert fresh not in {None, first} and create
    routed = conn.route(req(stateless=True))
    assert routed.request.session_id is None and routed.request.stateless
    conn.started(routed)
    assert run(conn) == (fresh, True)


def test_a_connection_bound_by_its_url_keeps_its_session() -> None:
    conn = ConnectionSession("bound-id")
    assert run(conn) == ("bound-id", False)
    assert run(conn, session_id="bound-id") == ("bound-id", False)
    with pytest.raises(WorkerError, match="names bound-id"):
        conn.route(req(session_id="elsewhere"))
    with pytest.raises(WorkerError, match="new_session"):
        conn.route(req(new_session=True))
    assert conn.route(req(stateless=True)).request.session_id is None


@pytest.mark.parametrize(
    "fields",
    [
        {"stateless": True, "session_id": "s"},
        {"new_session": True, "session_id": "s"},
        {"stateless": True, "new_session": True},
    ],
)
def test_contradictory_session_fields_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cannot be combined"):
        req(**fields)
