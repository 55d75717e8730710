"""Stored answers and the answers running now, for ``previous_response_id``, ``GET``,
``DELETE`` and ``cancel``.

A stored answer is a record of the session store (SQLite, or Redis shared by replicas), owned
by the API key that made it and expiring like an idle session: the ``response`` object as it
was answered, and the conversation's items up to and including its output, which a later
request with ``previous_response_id`` continues without resending them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gemma_worker.api.responses.convert import Item
from gemma_worker.api.responses.encode import ResponseEncoder
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.runtime.generation import Generation
from gemma_worker.sessions.service import off_loop
from gemma_worker.sessions.store import SessionStore

KIND = "response"


def not_found(response_id: str) -> WorkerError:
    """The answer for an unknown (expired, unstored, another key's) response."""
    return WorkerError(
        ErrorCode.SESSION_NOT_FOUND,
        f"no response '{response_id}' (it may have expired, or was not stored)",
        param="response_id",
    )


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A stored answer: the ``response`` object and the conversation's items through it."""

    response: dict[str, Any]
    items: list[Item]


async def load(store: SessionStore, response_id: str, owner: str | None) -> StoredResponse | None:
    """The stored answer, or ``None``."""
    raw = await off_loop(lambda: store.get_record(KIND, response_id, owner=owner))
    if raw is None:
        return None
    data = json.loads(raw)
    return StoredResponse(data["response"], data["items"])


async def save(store: SessionStore, stored: StoredResponse, owner: str | None) -> None:
    """Keep ``stored`` under its response's id."""
    data = json.dumps({"response": stored.response, "items": stored.items}, ensure_ascii=False)
    await off_loop(lambda: store.put_record(KIND, stored.response["id"], data, owner=owner))


async def delete(store: SessionStore, response_id: str, owner: str | None) -> bool:
    """Remove the stored answer; whether there was one."""
    return await off_loop(lambda: store.delete_record(KIND, response_id, owner=owner))


@dataclass(eq=False)
class Running:
    """The answers being generated in this process, by response id (for ``cancel`` and a
    ``GET`` of one still in progress). An entry stays until its answer is stored (or its
    request has ended otherwise), so a ``GET`` always finds one or the other."""

    _by_id: dict[str, tuple[str | None, Generation, ResponseEncoder]] = field(default_factory=dict)

    def add(self, owner: str | None, gen: Generation, encoder: ResponseEncoder) -> None:
        """``encoder``'s answer runs as ``gen`` until :meth:`remove` (once it is stored)."""
        self._by_id[encoder.id] = (owner, gen, encoder)

    def remove(self, response_id: str) -> None:
        """It ended."""
        self._by_id.pop(response_id, None)

    def get(self, response_id: str, owner: str | None) -> tuple[Generation, ResponseEncoder] | None:
        """The running answer, if it is ``owner``'s."""
        found = self._by_id.get(response_id)
        if found is None or found[0] != owner:
            return None
        return found[1], found[2]
