"""What the app keeps for its lifetime: settings, engine, sessions, lifecycle phase, open
connections."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from enum import StrEnum
from typing import Any

from gemma_worker.core.auth import KeyRing
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.hosts import OriginPolicy, is_loopback
from gemma_worker.core.sampling import RequestLimits
from gemma_worker.engine.interface import Engine, EngineState
from gemma_worker.engine.job import GenerationHandle
from gemma_worker.runtime.metrics import Metrics
from gemma_worker.runtime.ratelimit import RateLimiter
from gemma_worker.sessions.service import SessionService
from gemma_worker.settings import Settings
from gemma_worker.systemd import SystemdNotifier

log = logging.getLogger(__name__)


class Phase(StrEnum):
    """Readiness as ``/ready`` reports it."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


class WorkerState:
    """Per-app state, reached from handlers through dependencies (never a module global)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        sessions: SessionService,
        *,
        keys: KeyRing,
        limiter: RateLimiter,
        metrics: Metrics,
        origins: OriginPolicy,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        #: The browser pages trusted to use the worker (WebSocket, CORS, Ollama's bodies).
        self.origins = origins
        self.notifier = notifier or SystemdNotifier(None)
        self.limits: RequestLimits = settings.request_limits()
        self.phase = Phase.LOADING
        self.load_error: str | None = None
        self.active: set[GenerationHandle] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.connections: set[asyncio.Event] = set()
        #: WebSockets accepted but not yet authenticated (they have their own cap).
        self.authenticating = 0
        self._background: set[asyncio.Future[None]] = set()

    def worker_id_for(self, principal: str | None) -> str | None:
        """The replica name a caller may see (``X-Worker-Id``, ``GET /``). A configured
        ``worker_id`` is an opaque name meant to be shown: to everyone. The default one names
        the machine (host name and port): only to callers with a valid key, or to every caller
        of a keyless worker on loopback (they are all on this machine)."""
        settings = self.settings
        if settings.worker_id is not None:
            return settings.worker_id
        if principal is not None or (not self.keys.enabled and is_loopback(settings.host)):
            return settings.replica_name
        return None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def alive(self) -> bool:
        """Whether the worker is healthy for the watchdog: loading, or its engine running."""
        return self.phase is Phase.LOADING or self.engine.state is EngineState.READY

    def admit(self) -> None:
        """Raise ``OVERLOADED`` unless new work is accepted now."""
        if self.phase is Phase.DRAINING:
            raise WorkerError(ErrorCode.OVERLOADED, "the worker is shutting down", retry_after=5)
        if self.phase is not Phase.READY:
            raise WorkerError(ErrorCode.OVERLOADED, "the model is not loaded yet", retry_after=1)

    def request_started(self, handle: GenerationHandle) -> None:
        """Track a generation whose client is being served (for the drain)."""
        self.active.add(handle)
        self._idle.clear()

    def request_ended(self, handle: GenerationHandle) -> None:
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
