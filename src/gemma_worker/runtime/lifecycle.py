"""The worker's lifecycle, sans FastAPI: its phase (what ``/ready`` reports and admission
checks), the generations and connections in flight, the graceful drain, and the app's
background tasks. The one owner of readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from typing import Any, Protocol

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.systemd import SystemdNotifier

log = logging.getLogger(__name__)


class InFlight(Protocol):
    """A request being served (a generation, an embedding request): the drain may cancel it."""

    def cancel(self) -> None:
        """Stop it soon; it still ends with its own final answer."""
        ...


class Phase(StrEnum):
    """Readiness as ``/ready`` reports it."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


class Lifecycle:
    """Loading → ready (or failed) → draining; systemd hears of each change."""

    def __init__(self, notifier: SystemdNotifier | None = None) -> None:
        self.notifier = notifier or SystemdNotifier(None)
        self.phase = Phase.LOADING
        #: Why the model failed to load (``/ready`` says it).
        self.load_error: str | None = None
        #: Generations whose clients are being served: what the drain waits for.
        self.active: set[InFlight] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        #: One event per open WebSocket: set when it must close (the drain's end).
        self.connections: set[asyncio.Event] = set()
        #: WebSockets accepted but not yet authenticated (they have their own cap).
        self.authenticating = 0
        self._background: set[asyncio.Future[None]] = set()

    async def load(self, start: Callable[[], Awaitable[object]]) -> None:
        """Load the default model (``start``); ready when it is, failed (with the reason
        kept) when it cannot load. A drain begun meanwhile stays a drain."""
        try:
            await start()
        except WorkerError as exc:
            self._failed(exc.message)
            return
        except Exception as exc:
            self._failed(str(exc))
            return
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
            self.notifier.notify("READY=1", "STATUS=ready")
            log.info("ready")

    def _failed(self, reason: str) -> None:
        self.phase = Phase.FAILED
        self.load_error = reason
        self.notifier.notify("STATUS=model load failed")
        log.error("model load failed: %s", reason)

    def alive(self, engines_running: bool) -> bool:
        """Whether the worker is healthy for the watchdog: loading, or its engines running."""
        return self.phase is Phase.LOADING or engines_running

    def admit(self) -> None:
        """Raise ``OVERLOADED`` unless new work is accepted now."""
        if self.phase is Phase.DRAINING:
            raise WorkerError(ErrorCode.OVERLOADED, "the worker is shutting down", retry_after=5)
        if self.phase is not Phase.READY:
            raise WorkerError(ErrorCode.OVERLOADED, "the model is not loaded yet", retry_after=1)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request_started(self, handle: InFlight) -> None:
        """Track a generation whose client is being served (for the drain)."""
        self.active.add(handle)
        self._idle.clear()

    def request_ended(self, handle: InFlight) -> None:
        """The generation's final event went out (or its client left)."""
        self.active.discard(handle)
        if not self.active:
            self._idle.set()

    async def drain(self, grace_seconds: float) -> bool:
        """Stop accepting work and wait up to ``grace_seconds`` for generations in flight.

        Generations still running after the grace period are cancelled (their clients get a
        ``result`` with ``finish_reason: cancelled``). Returns whether everything finished in
        time. Open WebSockets are then told to close (each closes with 1001 after its last event).
        """
        self.phase = Phase.DRAINING
        self.notifier.notify("STOPPING=1", "STATUS=draining")
        log.info("draining", extra={"inflight": len(self.active), "grace_s": grace_seconds})
        finished = await self._wait_idle(grace_seconds)
        if not finished:
            for handle in list(self.active):
                handle.cancel()
            await self._wait_idle(5.0)
        for closing in list(self.connections):
            closing.set()
        return finished

    async def _wait_idle(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
