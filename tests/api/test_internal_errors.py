"""Unexpected faults: a generic INTERNAL_ERROR with an id, the details only in the log."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from gemma_worker.sessions.sqlite_store import SQLiteSessionStore
from gemma_worker.sessions.store import SessionInfo
from tests.api.wsclient import connect, run_request
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

SECRET = "disk fault in /var/lib/secret/sessions.db at 0x7f3a2b1c"


class BrokenStore(SQLiteSessionStore):
    """A store whose reads fail the way a real fault would."""

    def list_sessions(self, *, owner: str | None = None, limit: int = 100) -> list[SessionInfo]:
        raise RuntimeError(SECRET)

    def get(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None:
        raise RuntimeError(SECRET)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    settings = make_settings(parallel=1)
    store = BrokenStore(tmp_path_factory.mktemp("db") / "s.db", ttl_seconds=60, max_sessions=10)
    w = start_worker(settings, store=store)
    yield w
    w.stop()


def assert_generic(text: str) -> str:
    assert "secret" not in text and "0x7f" not in text and "Traceback" not in text
    found = re.search(r"internal error \(id ([0-9a-f-]{36})\)", text)
    assert found, text
    return found.group(1)


def test_rest_fault_is_a_generic_internal_error(
    broken: RunningWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    r = httpx.get(f"{broken.http}/v1/sessions", timeout=10)
    assert r.status_code == 500
    assert r.json()["code"] == "INTERNAL_ERROR"
    error_id = assert_generic(r.text)
    assert r.json()["error_id"] == error_id
    # the operator finds the id, with the real cause, in the log
    logged = [rec for rec in caplog.records if getattr(rec, "error_id", None) == error_id]
    assert logged and logged[0].exc_info is not None
    assert SECRET in str(logged[0].exc_info[1])


async def test_websocket_fault_is_a_generic_internal_error(broken: RunningWorker) -> None:
    async with connect(broken.ws) as ws:
        events = await run_request(ws, {"input": PARIS_PROMPT, "session_id": "s-1"})
        assert [e["type"] for e in events] == ["error"]
        assert events[0]["code"] == "INTERNAL_ERROR"
        assert_generic(events[0]["error"])
        # the connection survives; a request that does not touch the broken part works
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2, "stateless": True})
        assert events[-1]["type"] == "result"


def test_a_missing_route_is_a_json_error(broken: RunningWorker) -> None:
    r = httpx.get(f"{broken.http}/no/such/route", timeout=10)
    assert r.status_code == 404
    assert r.json()["code"] and "Traceback" not in r.text
