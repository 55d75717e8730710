"""Sessions as the API uses them: start or continue a conversation, record finished turns,
keep one turn at a time per session, and expire idle sessions.

The store is blocking (SQLite or Redis); every call to it runs on a worker thread, off the
event loop. A session's running turn is a lease (cap 1): in this process, or in Redis when
several replicas share the sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gemma_worker.cluster.errors import SharedStateError
from gemma_worker.cluster.leases import Hold, LeaseTable, LocalLeases
from gemma_worker.core.conversation import Conversation, ConversationFormat, PromptFormat, Turn
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.ids import new_id
from gemma_worker.sessions.store import SessionInfo, SessionStore, title_of

log = logging.getLogger(__name__)

T = TypeVar("T")


def _unavailable() -> WorkerError:
    return WorkerError(
        ErrorCode.OVERLOADED, "the session store is unavailable; retry shortly", retry_after=2
    )


async def off_loop(fn: Callable[[], T]) -> T:
    """Run a blocking store call on a thread; an unreachable shared store is ``OVERLOADED``
    (503)."""
    try:
        return await asyncio.to_thread(fn)
    except SharedStateError as exc:
        log.error("session store unavailable: %s", exc)
        raise _unavailable() from exc


def _not_found(session_id: str) -> WorkerError:
    return WorkerError(
        ErrorCode.SESSION_NOT_FOUND, "no such session (it may have expired)", session_id=session_id
    )


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """What a request asks of sessions: continue ``session_id``, start a new session (none
    named), or neither (``stateless``: no history, nothing stored). ``system`` is a new
    session's system prompt; ``prompt_format`` what the request asked for (``auto``: any).
    ``may_create``: the named session is the caller's own (a WebSocket connection's) and may
    not exist yet."""

    input: str
    session_id: str | None = None
    system: str | None = None
    stateless: bool = False
    prompt_format: PromptFormat = "auto"
    may_create: bool = False


@dataclass(eq=False)
class TurnPlan:
    """One turn about to run: the session it belongs to and the conversation to answer.

    The session stays claimed (other turns get ``SESSION_BUSY``) until :meth:`release` is
    called, or the plan is garbage-collected (a response that never started).
    """

    session_id: str
    owner: str | None
    is_new: bool
    conversation: Conversation
    #: The lease behind the claim.
    claim: Hold | None = field(default=None, repr=False)
    #: ``False`` for a stateless request: no history, nothing stored, no claim; its id only
    #: correlates its events.
    stored: bool = True
    #: Set once this turn is in the store (so its session exists).
    recorded: bool = False
    #: The model answering (a new session keeps it).
    model: str | None = None

    def release(self) -> None:
        """Give the session back (soon, never blocking; idempotent)."""
        if self.claim is not None:
            self.claim.release()


class SessionService:
    """The API's view of sessions, over any :class:`SessionStore`."""

    def __init__(
        self,
        store: SessionStore,
        forget: Callable[[str], None],
        leases: LeaseTable | None = None,
    ) -> None:
        """``forget(session_id)`` is called for every session deleted or expired (to drop
        its KV cache); ``leases`` holds the running turns (default: this process's own)."""
        self.store = store
        self._forget = forget
        self._leases: LeaseTable = leases or LocalLeases()

    async def _claim(self, plan: TurnPlan) -> None:
        try:
            hold = await Hold.take(self._leases, f"turn:{plan.session_id}", 1)
        except SharedStateError as exc:
            log.error("lease store unavailable: %s", exc)
            raise _unavailable() from exc
        if hold is None:
            raise WorkerError(
                ErrorCode.SESSION_BUSY,
                "this session is answering another request; retry when it has finished",
                session_id=plan.session_id,
                retry_after=1,
            )
        plan.claim = hold

    async def end_turn(self, plan: TurnPlan) -> None:
        """Free the session for its next turn now, on every replica, so a client that sends
        it as soon as this turn's last event arrives is not told ``SESSION_BUSY``."""
        if plan.claim is not None:
            await plan.claim.end()

    def _running(self) -> frozenset[str]:
        """Sessions answering a turn in this process (never expired under them)."""
        return frozenset(
            k.removeprefix("turn:") for k in self._leases.held() if k.startswith("turn:")
        )

    async def model_of(self, session_id: str, owner: str | None = None) -> str | None:
        """The model a session was answered by (``None``: unknown session, or none kept)."""
        info = await off_loop(lambda: self.store.get(session_id, owner=owner))
        return None if info is None else info.model

    async def begin(
        self,
        req: TurnRequest,
        fmt: ConversationFormat,
        owner: str | None = None,
        *,
        model: str | None = None,
    ) -> TurnPlan:
        """Plan the turn for ``req``: a new session when it names none, else the named one's
        next turn; with ``req.may_create``, a named session that does not exist yet is started
        under that id (a WebSocket connection's own session). A stateless request gets a plan
        that stores nothing. ``fmt`` is the prompt format the request resolved to (for a new
        session).

        ``model`` is the model that will answer: a new session keeps it, a session answered by
        another one is ``MODEL_MISMATCH``.

        Raises ``SESSION_NOT_FOUND``, ``SESSION_BUSY``, ``MODEL_MISMATCH`` or
        ``INVALID_REQUEST`` (a format or system prompt that contradicts the session's). The
        caller must ``release()`` the plan.
        """
        fresh = Conversation(req.input, fmt, (), req.system)
        if req.stateless:
            return TurnPlan(new_id(), owner, True, fresh, stored=False, model=model)
        if req.session_id is None:
            plan = TurnPlan(new_id(), owner, True, fresh, model=model)
            await self._claim(plan)
            return plan
        sid = req.session_id
        plan = TurnPlan(sid, owner, False, Conversation(req.input, fmt), model=model)
        await self._claim(plan)
        try:
            info = await off_loop(lambda: self.store.get(sid, owner=owner))
            if info is None and req.may_create:
                plan.is_new, plan.conversation = True, fresh
                return plan
            if info is None:
                raise _not_found(sid)
            _check_consistent(req, info, model)
            turns = await off_loop(lambda: self.store.turns(sid, owner=owner))
            if turns is None:
                raise _not_found(sid)
        except BaseException:
            plan.release()
            raise
        plan.conversation = Conversation(req.input, info.format, tuple(turns), info.system)
        return plan

    async def record(
        self, plan: TurnPlan, answer: str, prompt_tokens: int, completion: int
    ) -> None:
        """Store the finished turn (creating the session on its first turn); nothing for a
        stateless plan."""
        if not plan.stored:
            return
        conv = plan.conversation
        turn = Turn(conv.input, answer, prompt_tokens, completion)
        try:
            await asyncio.to_thread(self._write, plan, turn, self._running())
            plan.recorded = True
        except KeyError:
            log.info("session deleted during its turn", extra={"session_id": plan.session_id})
        except Exception:  # the answer still goes out; only its record is lost
            log.exception("could not store a turn", extra={"session_id": plan.session_id})

    def _write(self, plan: TurnPlan, turn: Turn, running: frozenset[str]) -> None:
        if plan.is_new:
            conv = plan.conversation
            self.store.create(
                plan.session_id,
                owner=plan.owner,
                system=conv.system,
                format=conv.format,
                model=plan.model,
                title=title_of(conv.input),
            )
            # Keep to max_sessions as sessions are made; never drop one answering a turn.
            for expired in self.store.expire(keep=running):
                self._forget(expired)
        self.store.append(plan.session_id, turn, owner=plan.owner)

    async def get(
        self, session_id: str, owner: str | None = None
    ) -> tuple[SessionInfo, list[Turn]]:
        """A session and its turns; ``SESSION_NOT_FOUND`` when unknown."""

        def read() -> tuple[SessionInfo, list[Turn]] | None:
            info = self.store.get(session_id, owner=owner)
            turns = self.store.turns(session_id, owner=owner)
            return None if info is None or turns is None else (info, turns)

        found = await off_loop(read)
        if found is None:
            raise _not_found(session_id)
        return found

    async def list_sessions(self, owner: str | None = None, limit: int = 100) -> list[SessionInfo]:
        """Sessions, most recently used first."""
        return await off_loop(lambda: self.store.list_sessions(owner=owner, limit=limit))

    async def delete(self, session_id: str, owner: str | None = None) -> None:
        """Delete a session; ``SESSION_NOT_FOUND`` when unknown."""
        if not await off_loop(lambda: self.store.delete(session_id, owner=owner)):
            raise _not_found(session_id)
        self._forget(session_id)

    async def expire(self) -> int:
        """Delete expired sessions now; how many went."""
        busy = self._running()
        expired = await off_loop(lambda: self.store.expire(keep=busy))
        for session_id in expired:
            self._forget(session_id)
        if expired:
            log.info("sessions expired", extra={"count": len(expired)})
        return len(expired)

    async def sweep(self, interval_s: float) -> None:
        """Expire sessions every ``interval_s`` seconds, until cancelled."""
        while True:
            try:
                await self.expire()
            except Exception:
                log.exception("session expiry failed")
            await asyncio.sleep(interval_s)


def _check_consistent(req: TurnRequest, info: SessionInfo, model: str | None) -> None:
    if model is not None and info.model is not None and model != info.model:
        raise WorkerError(
            ErrorCode.MODEL_MISMATCH,
            f"this session is answered by model '{info.model}'; continue it with that model "
            "(or leave model out), or start a new session",
            session_id=info.id,
            model=info.model,
        )
    if req.prompt_format not in {"auto", info.format}:
        raise WorkerError(
            ErrorCode.INVALID_REQUEST,
            f"this session uses prompt_format {info.format}; leave it out or send that",
        )
    if req.system is not None and req.system != info.system:
        raise WorkerError(
            ErrorCode.INVALID_REQUEST,
            "a session's system prompt is set by its first request and cannot change",
        )
