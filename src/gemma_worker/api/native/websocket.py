"""``/ws``: many requests per connection, token streaming, in-band cancel.

Every server message is one ND-JSON line. A bad message gets an ``error`` event and the
connection stays open; requests already running are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gemma_worker.api.auth import client_identity, principal_of
from gemma_worker.api.errors import internal_error, response_for
from gemma_worker.api.native.encode import native_events
from gemma_worker.api.native.request import to_request
from gemma_worker.core import events as ev
from gemma_worker.core.connection_session import ConnectionSession
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.ids import new_id
from gemma_worker.core.ws_messages import (
    CancelMessage,
    ExecuteMessage,
    ProtocolError,
    parse_auth_message,
    parse_client_message,
)
from gemma_worker.runtime.generation import Generation
from gemma_worker.runtime.lifecycle import Phase
from gemma_worker.runtime.pipeline import start_generation
from gemma_worker.runtime.registry import ModelSpec
from gemma_worker.runtime.request import Caller
from gemma_worker.runtime.state import WorkerState

log = logging.getLogger(__name__)

#: Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # after the drain: the server is going away
CLOSE_POLICY_VIOLATION = 1008  # authentication missing or wrong
CLOSE_TRY_AGAIN_LATER = 1013  # too many connections


class ClientGoneError(Exception):
    """Sending failed: the client has left."""


class Connection:
    """One WebSocket client: authenticates, reads messages, runs each request as a task,
    writes events."""

    def __init__(self, ws: WebSocket, state: WorkerState) -> None:
        self.ws = ws
        self.state = state
        self._send_lock = asyncio.Lock()
        self._requests: dict[str, tuple[asyncio.Task[None], Generation]] = {}
        self._closing = asyncio.Event()
        self.principal: str | None = principal_of(ws.scope)
        #: The connection's current session (``/ws?session_id=...`` binds it to one).
        self.session = ConnectionSession(ws.query_params.get("session_id"))
        self._last_activity = time.monotonic()
        self._stalled = False
        #: Loading notes being sent (kept: a task nobody holds may be collected).
        self._notes: set[asyncio.Future[None]] = set()

    async def run(self) -> None:
        """Serve until the client leaves, idles out or the worker drains."""
        await self.ws.accept()
        if not self.state.origins.allows(self.ws.headers.get("origin")):
            # A web page from elsewhere must not drive a local worker through the browser.
            await self._close(CLOSE_POLICY_VIOLATION, "origin not allowed")
            return
        if not await self._admit_and_authenticate():
            return
        self.state.lifecycle.connections.add(self._closing)
        receiver: asyncio.Task[Any] | None = None
        closer: asyncio.Task[Any] = asyncio.create_task(self._closing.wait())
        try:
            while True:
                if receiver is None:
                    receiver = asyncio.create_task(self.ws.receive())
                await asyncio.wait(
                    {receiver, closer},
                    timeout=self._idle_left(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if closer.done():
                    if self._stalled:
                        with contextlib.suppress(TimeoutError):  # it is not reading
                            async with asyncio.timeout(1.0):
                                await self._close(CLOSE_POLICY_VIOLATION, "stalled: not reading")
                    else:
                        await self._close_after_inflight()
                    return
                if not receiver.done():
                    if self._idle_expired():
                        await self._close(CLOSE_NORMAL, "idle timeout")
                        return
                    continue
                message = receiver.result()
                receiver = None
                if message["type"] == "websocket.disconnect":
                    return
                self._last_activity = time.monotonic()
                raw = message.get("text")
                if raw is None:
                    raw = message.get("bytes") or b""
                await self._on_message(raw)
        except (WebSocketDisconnect, ClientGoneError, RuntimeError):  # receive() after a disconnect
            return
        finally:
            self.state.lifecycle.connections.discard(self._closing)
            closer.cancel()
            if receiver is not None:
                receiver.cancel()
            for task, _ in list(self._requests.values()):
                task.cancel()

    def _idle_left(self) -> float | None:
        """Seconds until the idle timeout (the full timeout while a request runs)."""
        timeout = self.state.settings.ws_idle_timeout_seconds
        if timeout is None or self._requests:
            return timeout
        return max(0.0, timeout - (time.monotonic() - self._last_activity))

    def _idle_expired(self) -> bool:
        return not self._requests and self._idle_left() == 0.0

    async def _admit_and_authenticate(self) -> bool:
        """With API keys configured, accept a valid ``Authorization`` header or wait for an
        ``{"type": "auth", "token": ...}`` first message (else close with 1008); then take a
        place under the connection cap (1013 when full). Connections waiting for their auth
        message have a cap of their own, so they cannot crowd out authenticated clients."""
        cap = self.state.settings.max_connections
        scope_state: dict[str, Any] = self.ws.scope.get("state") or {}
        if scope_state.get("auth_required") and self.principal is None:
            if scope_state.get("auth_rejected"):
                await self._close(CLOSE_POLICY_VIOLATION, "invalid API key")
                return False
            if self.state.lifecycle.authenticating >= cap:
                await self._close(CLOSE_TRY_AGAIN_LATER, "too many connections; retry later")
                return False
            self.state.lifecycle.authenticating += 1
            try:
                if not await self._receive_auth_message():
                    return False
            finally:
                self.state.lifecycle.authenticating -= 1
        if len(self.state.lifecycle.connections) >= cap:
            await self._close(CLOSE_TRY_AGAIN_LATER, "too many connections; retry later")
            return False
        return True

    async def _receive_auth_message(self) -> bool:
        """Wait for the auth message; close with 1008 when it is late or its key is wrong."""
        try:
            async with asyncio.timeout(self.state.settings.ws_auth_timeout_seconds):
                message = await self.ws.receive()
        except TimeoutError:
            await self._close(CLOSE_POLICY_VIOLATION, "authentication required")
            return False
        if message["type"] == "websocket.disconnect":
            return False
        self.principal = self.state.keys.identify(parse_auth_message(message.get("text")))
        if self.principal is None:
            await self._close(CLOSE_POLICY_VIOLATION, "authentication failed")
            return False
        self._last_activity = time.monotonic()
        return True

    async def _close(self, code: int, reason: str) -> None:
        if self.ws.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason)

    async def _close_after_inflight(self) -> None:
        tasks = [task for task, _ in self._requests.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._close(CLOSE_GOING_AWAY, "server shutting down")

    async def send(self, event: ev.Event) -> None:
        """Write one event; :class:`ClientGoneError` if the client has left."""
        if event["type"] == "error":
            self.state.metrics.error(event["code"])
        async with self._send_lock:
            if self._stalled:
                raise ClientGoneError
            try:
                async with asyncio.timeout(self.state.settings.stream_stall_timeout_seconds):
                    await self.ws.send_text(ev.frame(event))
            except TimeoutError as exc:
                # The client stopped reading: its requests end (slots freed), the connection
                # closes (the close frame goes out when, if ever, it reads again).
                self._stalled = True
                self.state.metrics.stalled_streams.labels(transport="websocket").inc()
                log.info("websocket stalled: the client stopped reading; closing")
                current = asyncio.current_task()
                for task, _ in list(self._requests.values()):
                    if task is not current:
                        task.cancel()
                self._closing.set()
                raise ClientGoneError from exc
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                raise ClientGoneError from exc

    async def _on_message(self, raw: str | bytes) -> None:
        try:
            await self._handle(raw)
        except ClientGoneError:
            raise
        except Exception:  # whatever a message makes go wrong, the client hears of it
            error = internal_error("unexpected error handling a message")
            await self.send(ev.error_event(error, None))

    async def _handle(self, raw: str | bytes) -> None:
        keyless = not self.state.keys.enabled
        if keyless and isinstance(raw, str) and parse_auth_message(raw) is not None:
            return  # a key sent to a worker without keys: nothing to check, nothing to answer
        try:
            message = parse_client_message(raw)
        except ProtocolError as exc:
            await self.send(ev.error_event(exc, exc.request_id))
            return
        try:
            if isinstance(message, CancelMessage):
                await self._cancel(message.request_id)
            else:
                await self._execute(message)
        except ClientGoneError:
            raise
        except Exception:  # a fault must not take the connection down with it
            error = internal_error("unexpected error handling a message")
            rid = (
                message.request_id
                if isinstance(message, CancelMessage)
                else message.request.request_id
            )
            await self.send(ev.error_event(error, rid))

    async def _cancel(self, request_id: str | None) -> None:
        if request_id is None and len(self._requests) == 1:
            request_id = next(iter(self._requests))
        entry = self._requests.get(request_id) if request_id is not None else None
        if entry is None:
            error = WorkerError(
                ErrorCode.INVALID_REQUEST,
                "no request in flight with that request_id"
                if request_id is not None
                else "cancel needs a request_id when several requests are in flight",
            )
            await self.send(ev.error_event(error, request_id))
            return
        entry[1].handle.cancel()

    async def _execute(self, message: ExecuteMessage) -> None:
        req = message.request
        try:
            routed = self.session.route(req)
            req = routed.request
            if req.request_id is not None and req.request_id in self._requests:
                raise WorkerError(
                    ErrorCode.INVALID_REQUEST, "a request with this request_id is in flight"
                )
            if len(self._requests) >= self.state.settings.max_requests_per_connection:
                raise WorkerError(
                    ErrorCode.OVERLOADED, "too many requests in flight on this connection"
                )
            caller = Caller(
                self.principal,
                self.principal or client_identity(self.ws.scope),
                self.state.keys.grant(self.principal).models,
            )
            request_id = req.request_id or new_id()
            gen = await start_generation(
                self.state,
                dataclasses.replace(
                    to_request(req, caller, transport="websocket", may_create=routed.may_create),
                    request_id=request_id,
                    on_loading=lambda spec: self._loading(request_id, spec),
                ),
            )
        except WorkerError as exc:
            await self.send(ev.error_event(exc, req.request_id))
            return
        self.session.started(routed)
        task = asyncio.create_task(self._stream(gen))
        self._requests[gen.request_id] = (task, gen)

    def _loading(self, request_id: str, spec: ModelSpec) -> None:
        """Tell the client its request waits for its model to load (before ``session``)."""

        async def note() -> None:
            with contextlib.suppress(ClientGoneError):
                await self.send(
                    ev.reasoning_event(
                        request_id, f"loading model {spec.id}", stage="loading", model=spec.id
                    )
                )

        task = asyncio.ensure_future(note())
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    async def _stream(self, gen: Generation) -> None:
        try:
            async with contextlib.aclosing(native_events(gen)) as events:
                async for event in events:
                    if gen.turn is not None and gen.turn.recorded:
                        # before the result goes out: its session exists
                        self.session.stored(gen.turn.session_id)
                    await self.send(event)
        except ClientGoneError:
            log.info("client left mid-stream", extra={"request_id": gen.request_id})
        except Exception:  # a fault mid-stream: the client still gets a final event
            error = internal_error("unexpected error in a stream", request_id=gen.request_id)
            with contextlib.suppress(ClientGoneError):
                await self.send(ev.error_event(error, gen.request_id))
        finally:
            self._requests.pop(gen.request_id, None)
            self._last_activity = time.monotonic()


async def websocket_endpoint(ws: WebSocket) -> None:
    """The ``/ws`` route. While the worker drains, the handshake is refused with 503 (a JSON
    error body), so a balancer retries the connection on another replica."""
    state: WorkerState = ws.app.state.worker
    if state.lifecycle.phase is Phase.DRAINING and "websocket.http.response" in ws.scope.get(
        "extensions", {}
    ):
        error = WorkerError(ErrorCode.OVERLOADED, "the worker is shutting down", retry_after=5)
        state.metrics.error(error.code)
        await ws.send_denial_response(response_for(ws.url.path, error))
        return
    await Connection(ws, state).run()
