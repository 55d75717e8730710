"""The app factory: ``create_app(settings)`` builds a FastAPI app with its own engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator

from fastapi import FastAPI

from gemma_worker import __version__
from gemma_worker.api.anthropic.routes import router as anthropic_router
from gemma_worker.api.auth import AuthMiddleware
from gemma_worker.api.body_limit import BodyLimitMiddleware
from gemma_worker.api.errors import install_error_handlers
from gemma_worker.api.hosts import AllowedHostsMiddleware, TrustedOriginsCORS
from gemma_worker.api.json_route import mount
from gemma_worker.api.metrics import HttpMetricsMiddleware
from gemma_worker.api.metrics_route import router as metrics_router
from gemma_worker.api.model_routes import router as model_router
from gemma_worker.api.native.routes import router as native_router
from gemma_worker.api.native.websocket import websocket_endpoint
from gemma_worker.api.ollama.catalog import ModelCatalog
from gemma_worker.api.ollama.content_type import JsonBodyMiddleware
from gemma_worker.api.ollama.embed import routes as ollama_embed_routes
from gemma_worker.api.ollama.routes import router as ollama_router
from gemma_worker.api.openai.embeddings import route as openai_embed_route
from gemma_worker.api.openai.routes import router as openai_router
from gemma_worker.api.responses.records import Running
from gemma_worker.api.responses.routes import router as responses_router
from gemma_worker.api.routes import router
from gemma_worker.api.session_routes import router as session_router
from gemma_worker.api.ui import BrowserRedirectMiddleware, load_assets, ui_router
from gemma_worker.api.worker_id import WorkerIdMiddleware
from gemma_worker.cluster.leases import LeaseTable, LocalLeases, RedisLeases
from gemma_worker.cluster.redis_client import connect
from gemma_worker.core.auth import KeyConfigError, KeyRing
from gemma_worker.core.hosts import AllowedHosts, OriginPolicy
from gemma_worker.engine.compute_gate import ComputeGate
from gemma_worker.engine.embedding_engine import EmbeddingEngine
from gemma_worker.engine.gguf_header import GgufError, read_gguf_header
from gemma_worker.engine.interface import Engine
from gemma_worker.engine.llama import ModelLoadError
from gemma_worker.engine.llama_engine import LlamaEngine
from gemma_worker.engine.memory import MemoryNeed, available_memory, memory_need
from gemma_worker.logging_setup import keep_secrets_out_of_logs
from gemma_worker.private_files import private_dir
from gemma_worker.runtime.lifecycle import Lifecycle, Phase
from gemma_worker.runtime.metrics import Metrics
from gemma_worker.runtime.models import ModelManager
from gemma_worker.runtime.ratelimit import RateLimiter
from gemma_worker.runtime.registry import (
    ModelRegistry,
    ModelSpec,
    embedding_config,
    engine_config,
    request_limits,
)
from gemma_worker.runtime.state import WorkerState
from gemma_worker.sessions.redis_store import RedisSessionStore
from gemma_worker.sessions.service import SessionService
from gemma_worker.sessions.sqlite_store import SQLiteSessionStore
from gemma_worker.sessions.store import SessionStore
from gemma_worker.settings import Settings
from gemma_worker.systemd import SystemdNotifier

log = logging.getLogger(__name__)


def load_keys(settings: Settings) -> KeyRing:
    """The API keys from the settings and the key file; :class:`KeyConfigError` if unusable."""
    text = None
    if settings.api_key_file is not None:
        try:
            text = settings.api_key_file.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise KeyConfigError(f"cannot read the API key file: {exc.strerror}") from exc
    return KeyRing.build(settings.api_keys, text)


def allowed_hosts(settings: Settings, keys: KeyRing) -> AllowedHosts:
    """The host names the worker answers to: ``allowed_hosts``, or the default for its keys
    and bind address."""
    return AllowedHosts.for_worker(
        settings.allowed_hosts,
        keys_enabled=keys.enabled,
        bind_host=settings.host,
        machine_name=socket.gethostname(),
    )


def open_store(settings: Settings) -> SessionStore:
    """The session store the settings name: Redis when ``redis_url`` is set, else SQLite at
    ``session_db_path``."""
    if settings.redis_url is not None:
        return RedisSessionStore(
            connect(settings.redis_url),
            prefix=settings.redis_prefix,
            ttl_seconds=settings.session_ttl_seconds,
            max_sessions=settings.max_sessions,
        )
    return SQLiteSessionStore(
        settings.session_db_path,
        ttl_seconds=settings.session_ttl_seconds,
        max_sessions=settings.max_sessions,
    )


def open_leases(settings: Settings) -> LeaseTable:
    """Where running turns and generations are counted: Redis when ``redis_url`` is set (every
    replica sees them), else this process."""
    if settings.redis_url is None:
        return LocalLeases()
    return RedisLeases(
        connect(settings.redis_url),
        prefix=settings.redis_prefix,
        ttl_seconds=settings.lease_ttl_seconds,
    )


def open_models(
    settings: Settings, registry: ModelRegistry, metrics: Metrics, engine: Engine | None = None
) -> ModelManager:
    """The model manager: a :class:`LlamaEngine` per model (``engine``, when given, serves
    the default model: tests), memory checked before each load."""

    # One decode at a time in the process, whichever model's (see compute_gate).
    gate = ComputeGate()

    def make_engine(spec: ModelSpec) -> Engine:
        if engine is not None and spec.default:
            return engine
        return LlamaEngine(dataclasses.replace(engine_config(settings, spec), gate=gate))

    def make_embedder(spec: ModelSpec) -> EmbeddingEngine:
        return EmbeddingEngine(embedding_config(settings, spec, gate))

    def need_of(spec: ModelSpec) -> MemoryNeed | None:
        if engine is not None and spec.default:
            return None
        config = engine_config(settings, spec)
        path = spec.locate()
        try:
            header = read_gguf_header(path)
        except GgufError as exc:
            raise ModelLoadError(str(exc)) from exc
        return memory_need(header, path.stat().st_size, config.n_ctx, config.parallel)

    return ModelManager(
        registry,
        make_engine,
        limits_for=lambda spec: request_limits(settings, spec),
        keep_alive=settings.keep_alive_seconds,
        max_loaded=settings.max_loaded_models,
        need_of=need_of,
        available=available_memory,
        on_load=metrics.model_load,
        make_embedder=make_embedder,
    )


def create_app(
    settings: Settings, engine: Engine | None = None, store: SessionStore | None = None
) -> FastAPI:
    """Build the app. The model loads in the background at startup; ``/ready`` says when.

    ``engine`` defaults to a :class:`LlamaEngine` built from ``settings``, ``store`` to the
    SQLite session store at ``settings.session_db_path`` (opened here, closed at shutdown).
    """
    keep_secrets_out_of_logs()
    keys = load_keys(settings)  # before anything is opened: bad key config fails fast
    # Sessions and KV caches are conversations: the owner's only (an older worker's default
    # folder is tightened; a configured one is left as the operator made it).
    private_dir(settings.data_dir, tighten=settings.own_data_dir)
    hosts = allowed_hosts(settings, keys)
    origins = OriginPolicy(settings.cors_origins, hosts)
    registry = ModelRegistry.from_settings(settings)
    metrics = Metrics()
    models = open_models(settings, registry, metrics, engine)
    store = store or open_store(settings)
    leases = open_leases(settings)
    state = WorkerState(
        settings,
        models,
        SessionService(store, models.forget, leases),
        keys=keys,
        limiter=RateLimiter(
            requests=settings.rate_limit_requests,
            tokens=settings.rate_limit_tokens,
            max_concurrent=settings.max_concurrent_per_key,
            storage_uri=settings.rate_limit_storage_uri,
            leases=leases,
        ),
        metrics=metrics,
        origins=origins,
        lifecycle=Lifecycle(SystemdNotifier.from_env()),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lifecycle = state.lifecycle
        loader = asyncio.create_task(lifecycle.load(lambda: models.load(None)))
        sweeper = asyncio.create_task(state.sessions.sweep(settings.session_sweep_seconds))
        renewer = asyncio.create_task(leases.keep_alive())
        watchdog = asyncio.create_task(
            lifecycle.notifier.watchdog(lambda: lifecycle.alive(models.healthy()))
        )
        app.state.loader = loader
        try:
            yield
        finally:
            if lifecycle.phase is not Phase.DRAINING:
                await lifecycle.drain(settings.drain_grace_seconds)
            for task in (loader, sweeper, renewer, watchdog):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await models.close()
            leases.close()
            store.close()

    app = FastAPI(
        title="FazAI Gemma Worker",
        version=__version__,
        description="Local Gemma inference: WebSocket token streaming and REST.",
        lifespan=lifespan,
    )
    app.state.worker = state
    app.state.model_catalog = ModelCatalog(state)
    app.state.responses_running = Running()
    # The last added middleware is the outermost: metrics see everything, the Host check
    # runs before anything else can, the worker id sees what auth found, CORS answers
    # preflights before auth, auth runs before a body is read.
    app.add_middleware(JsonBodyMiddleware, origins=origins)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, count_error=metrics.error
    )
    app.add_middleware(AuthMiddleware, keys=keys, count_error=metrics.error)
    app.add_middleware(TrustedOriginsCORS, origins=origins)
    app.add_middleware(BrowserRedirectMiddleware)
    app.add_middleware(WorkerIdMiddleware, worker_id_for=state.worker_id_for)
    app.add_middleware(AllowedHostsMiddleware, hosts=hosts, count_error=metrics.error)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(native_router)
    app.include_router(openai_router)
    app.include_router(ollama_router)
    app.include_router(anthropic_router)
    app.include_router(responses_router)
    app.include_router(model_router)
    app.include_router(session_router)
    app.include_router(metrics_router)
    app.include_router(ui_router(load_assets()))
    app.add_api_websocket_route("/ws", websocket_endpoint)
    # Embedding requests take a few milliseconds: their routes come first, below FastAPI.
    mount(app, [openai_embed_route, *ollama_embed_routes])
    return app
