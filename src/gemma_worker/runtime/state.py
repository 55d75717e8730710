"""What the app's handlers reach: settings, the models, sessions, keys, limits, metrics and
the lifecycle, each owned by its own object; this one only holds them."""

from __future__ import annotations

from gemma_worker.core.auth import KeyRing
from gemma_worker.core.hosts import OriginPolicy, is_loopback
from gemma_worker.core.sampling import RequestLimits
from gemma_worker.engine.interface import Engine, EngineStats
from gemma_worker.runtime.lifecycle import Lifecycle
from gemma_worker.runtime.metrics import Metrics
from gemma_worker.runtime.models import ModelManager
from gemma_worker.runtime.ratelimit import RateLimiter
from gemma_worker.sessions.service import SessionService
from gemma_worker.settings import Settings


class WorkerState:
    """Per-app state, reached from handlers through dependencies (never a module global)."""

    def __init__(
        self,
        settings: Settings,
        models: ModelManager,
        sessions: SessionService,
        *,
        keys: KeyRing,
        limiter: RateLimiter,
        metrics: Metrics,
        origins: OriginPolicy,
        lifecycle: Lifecycle,
    ) -> None:
        self.settings = settings
        #: The models, loaded on demand (the one owner of engines).
        self.models = models
        self.sessions = sessions
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        #: The browser pages trusted to use the worker (WebSocket, CORS, Ollama's bodies).
        self.origins = origins
        self.lifecycle = lifecycle
        self.limits: RequestLimits = settings.request_limits()
        # Who sees which name depends on settings alone: decided once.
        configured = settings.worker_id is not None
        own = settings.worker_id if configured else settings.replica_name
        #: What a caller with a valid key sees, and what every other caller sees.
        self._id_for_keys = own
        self._id_for_anyone = (
            own if configured or (not keys.enabled and is_loopback(settings.host)) else None
        )

    @property
    def default_engine(self) -> Engine | None:
        """The default model's engine while it is loaded."""
        return self.models.engine_of(self.models.registry.default)

    def stats(self) -> EngineStats:
        """The load of every loaded model together."""
        stats = [v.engine.stats() for v in self.models.loaded() if v.engine is not None]
        return EngineStats(
            active=sum(s.active for s in stats),
            queued=sum(s.queued for s in stats),
            slots=sum(s.slots for s in stats),
            max_queue=sum(s.max_queue for s in stats),
        )

    def worker_id_for(self, principal: str | None) -> str | None:
        """The replica name a caller may see (``X-Worker-Id``, ``GET /``). A configured
        ``worker_id`` is an opaque name meant to be shown: to everyone. The default one names
        the machine (host name and port): only to callers with a valid key, or to every caller
        of a keyless worker on loopback (they are all on this machine)."""
        return self._id_for_keys if principal is not None else self._id_for_anyone
