"""The loaded models: loaded when a request names one, unloaded when idle (sans FastAPI).

One owner: :class:`ModelManager` alone starts and closes engines. A request holds a
:class:`ModelUse` while it runs, so its model is never unloaded under it. Loads run one at a
time, each on its engine's own thread (streams of other models keep decoding); before one,
the least recently used idle models are unloaded while more than ``max_loaded`` would be
loaded or its memory estimate does not fit what is available.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.sampling import RequestLimits
from gemma_worker.engine.embedding_engine import EmbeddingEngine
from gemma_worker.engine.interface import Engine, EngineState
from gemma_worker.engine.llama import ModelLoadError
from gemma_worker.engine.memory import MemoryNeed
from gemma_worker.runtime.registry import ModelRegistry, ModelSpec

log = logging.getLogger(__name__)

#: How long a load waits for a busy model to go idle before giving up (503).
BUSY_WAIT_S = 60.0


class ModelStatus(StrEnum):
    """A model's state, as llama-server's router reports it."""

    LOADED = "loaded"
    LOADING = "loading"
    UNLOADED = "unloaded"


@dataclass(eq=False)
class _Entry:
    spec: ModelSpec
    #: The request limits of its spec (made with the entry: the spec never changes).
    limits: RequestLimits
    #: Whether its engine embeds (a generative model's embedding engine is an entry apart).
    embeds: bool = False
    engine: Engine | None = None
    loading: asyncio.Future[Engine] | None = None
    users: int = 0
    last_used: float = 0.0
    #: Set by the latest request (``None``: it did not say, the model's default).
    keep_alive: float | None = None
    #: ``unload`` was asked while requests ran: it unloads when they end.
    unload_pending: bool = False
    #: When it unloads (Unix seconds; ``None``: in use, or never).
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None
    need: MemoryNeed | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ModelView:
    """What listings show of one model."""

    spec: ModelSpec
    status: ModelStatus
    engine: Engine | None
    expires_at: float | None
    running: int
    need: MemoryNeed | None
    error: str | None


class ModelUse:
    """One request's hold on a loaded model; :meth:`release` when the request is over."""

    def __init__(
        self, manager: ModelManager, entry: _Entry, engine: Engine, load_seconds: float = 0.0
    ) -> None:
        self._manager = manager
        self._entry = entry
        self.spec = entry.spec
        self.engine = engine
        #: How long the request waited for its model to load (0: it was loaded).
        self.load_seconds = load_seconds
        self.limits = entry.limits
        self._released = False

    @property
    def embedder(self) -> EmbeddingEngine:
        """The engine as an embedding engine (held with ``embed=True``)."""
        engine = self.engine
        assert isinstance(engine, EmbeddingEngine), "held for embeddings"
        return engine

    def release(self, keep_alive: float | None = None) -> None:
        """Let go of the model (idempotent); ``keep_alive`` (seconds) is how long it stays
        loaded from now on, as Ollama's requests set it (``None``: the model's default)."""
        if not self._released:
            self._released = True
            self._manager._let_go(self._entry, keep_alive)


MakeEngine = Callable[[ModelSpec], Engine]
NeedOf = Callable[[ModelSpec, Engine], MemoryNeed | None]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class ModelManager:
    """Loads, tracks and unloads the registry's models."""

    def __init__(
        self,
        registry: ModelRegistry,
        make_engine: MakeEngine,
        *,
        limits_for: Callable[[ModelSpec], RequestLimits],
        keep_alive: float,
        max_loaded: int,
        need_of: Callable[[ModelSpec], MemoryNeed | None] = lambda _spec: None,
        available: Callable[[], int | None] = lambda: None,
        busy_wait_s: float = BUSY_WAIT_S,
        on_load: Callable[[str, bool], None] = lambda _id, _ok: None,
        make_embedder: Callable[[ModelSpec], EmbeddingEngine] | None = None,
    ) -> None:
        """``keep_alive`` (seconds) is the worker's default; without a models folder the
        one model stays loaded unless a request says otherwise. ``need_of`` estimates a
        model's memory (blocking: run on a thread), ``available`` measures free memory;
        ``on_load`` hears each load's model id and whether it succeeded (metrics);
        ``make_embedder`` makes the engine of a model held for embeddings."""
        self.registry = registry
        self._make_engine = make_engine
        self._make_embedder = make_embedder
        self.limits_for = limits_for
        self._keep_alive = keep_alive if registry.folder is not None else math.inf
        self.max_loaded = max_loaded
        self._need_of = need_of
        self._available = available
        self._busy_wait_s = busy_wait_s
        self._on_load = on_load
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False

    # --- requests -------------------------------------------------------------------------
    async def use(
        self, name: str | None, on_loading: Callable[[ModelSpec], object] | None = None
    ) -> ModelUse:
        """Hold the model ``name`` means, loading it first if it is not loaded
        (``on_loading`` is told then). ``MODEL_NOT_FOUND``, ``MODEL_TOO_LARGE``,
        ``MODEL_LOAD_FAILED`` or ``OVERLOADED`` (every loaded model busy) otherwise."""
        spec = self.registry.resolve(name)
        return await self.use_spec(spec, on_loading)

    async def use_spec(
        self,
        spec: ModelSpec,
        on_loading: Callable[[ModelSpec], object] | None = None,
        *,
        embed: bool = False,
    ) -> ModelUse:
        """:meth:`use` for a model already resolved; ``embed``: its embedding engine (for a
        generative model, a second engine, loaded and unloaded on its own)."""
        entry = self._entry(spec, embed or spec.embeds_only)
        entry.users += 1  # from now on it is not unloaded under this request
        self._stop_timer(entry)
        try:
            engine = entry.engine
            if engine is not None and engine.state is not EngineState.READY:
                # It stopped after an internal error: the worker reports itself failed (the
                # watchdog restarts it) until an admin unloads the model.
                raise WorkerError(
                    ErrorCode.OVERLOADED,
                    f"model '{spec.id}' stopped after an internal error",
                    retry_after=5,
                )
            waited = 0.0
            if engine is None:
                if on_loading is not None:
                    on_loading(spec)
                t0 = time.perf_counter()
                engine = await self._ensure(entry)
                waited = time.perf_counter() - t0
        except BaseException:
            self._let_go(entry, None)
            raise
        entry.last_used = time.monotonic()
        return ModelUse(self, entry, engine, waited)

    async def load(self, name: str | None, keep_alive: float | None = None) -> ModelSpec:
        """Load a model now (``POST /models/load``, Ollama's empty request)."""
        use = await self.use(name)
        use.release(keep_alive)
        return use.spec

    async def unload(self, name: str | None) -> bool:
        """Unload a model now, or, while requests run on it, as soon as they end; whether it
        was loaded."""
        spec = self.registry.resolve(name)
        unloaded = False
        for key in (spec.id, _key(spec, not spec.embeds_only)):
            entry = self._entries.get(key)
            if entry is not None and await self._unload_entry(entry):
                unloaded = True
        return unloaded

    async def _unload_entry(self, entry: _Entry) -> bool:
        if entry.engine is None and entry.loading is None:
            return False
        entry.unload_pending = True
        if entry.engine is not None and entry.engine.state is not EngineState.READY:
            await self._expire(entry, stopped=True)  # its requests have failed already
            return True
        if entry.users == 0:
            await self._expire(entry)
        return True

    def forget(self, session: str) -> None:
        """Drop ``session``'s KV caches in every loaded model (the session is gone)."""
        for entry in self._entries.values():
            if entry.engine is not None:
                entry.engine.forget(session)

    # --- listings -------------------------------------------------------------------------
    def views(self) -> list[ModelView]:
        """Every model of the registry, with its state."""
        return [self._view(spec) for spec in self.registry.specs()]

    def view(self, spec: ModelSpec) -> ModelView:
        """One model's state."""
        return self._view(spec)

    def loaded(self) -> list[ModelView]:
        """The loaded models, most recently used first (a model loaded both to generate and
        to embed is listed once)."""
        entries = sorted(
            (e for e in self._entries.values() if e.engine is not None),
            key=lambda e: -e.last_used,
        )
        ids = dict.fromkeys(e.spec.id for e in entries)
        return [self._view(self._entries_of(i)[0].spec) for i in ids]

    def _entries_of(self, model_id: str) -> list[_Entry]:
        return [e for e in self._entries.values() if e.spec.id == model_id]

    def engine_of(self, spec: ModelSpec) -> Engine | None:
        """``spec``'s engine if it is loaded."""
        entry = self._entries.get(spec.id)
        return None if entry is None else entry.engine

    def _view(self, spec: ModelSpec) -> ModelView:
        entry = self._entries.get(spec.id)
        if entry is None or (entry.engine is None and entry.loading is None):
            entry = self._entries.get(_key(spec, not spec.embeds_only)) or entry
        if entry is None:
            return ModelView(spec, ModelStatus.UNLOADED, None, None, 0, None, None)
        status = (
            ModelStatus.LOADING
            if entry.loading is not None
            else ModelStatus.LOADED
            if entry.engine is not None
            else ModelStatus.UNLOADED
        )
        return ModelView(
            spec, status, entry.engine, entry.expires_at, entry.users, entry.need, entry.error
        )

    def healthy(self) -> bool:
        """Whether every loaded engine runs (the watchdog's question)."""
        return all(e.engine.state is EngineState.READY for e in self._entries.values() if e.engine)

    async def close(self) -> None:
        """Unload everything (at shutdown)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for entry in self._entries.values():
            self._stop_timer(entry)
            if entry.loading is not None:
                with contextlib.suppress(BaseException):
                    await entry.loading
            engine, entry.engine = entry.engine, None
            if engine is not None:
                await engine.close()

    # --- loading and unloading ------------------------------------------------------------
    def _entry(self, spec: ModelSpec, embeds: bool) -> _Entry:
        key = _key(spec, embeds)
        entry = self._entries.get(key)
        if entry is None or entry.spec != spec:
            if entry is not None and (entry.engine is not None or entry.loading is not None):
                return entry  # its settings changed on disk: the running one serves on
            entry = self._entries[key] = _Entry(spec, self.limits_for(spec), embeds)
        return entry

    async def _ensure(self, entry: _Entry) -> Engine:
        if entry.loading is None:
            entry.loading = asyncio.ensure_future(self._load(entry))
        return await asyncio.shield(entry.loading)

    async def _load(self, entry: _Entry) -> Engine:
        spec = entry.spec
        try:
            async with self._lock:
                if self._closed:
                    raise WorkerError(ErrorCode.OVERLOADED, "the worker is shutting down")
                self.registry.check_file(spec)
                try:
                    entry.need = await asyncio.to_thread(self._need_of, spec)
                except ModelLoadError as exc:
                    raise _load_failed(spec, exc) from exc
                await self._make_room(entry)
                engine = self._new_engine(entry)
                t0 = time.perf_counter()
                try:
                    await engine.start()
                except BaseException as exc:
                    with contextlib.suppress(Exception):
                        await engine.close()
                    if isinstance(exc, ModelLoadError):
                        raise _load_failed(spec, exc) from exc
                    if isinstance(exc, Exception):
                        log.exception("model load failed", extra={"model": spec.id})
                        raise WorkerError(
                            ErrorCode.MODEL_LOAD_FAILED,
                            f"model '{spec.id}' could not be loaded",
                            param="model",
                        ) from exc
                    raise
                entry.engine, entry.error = engine, None
                self._on_load(spec.id, True)
                log.info(
                    "model ready",
                    extra={"model": spec.id, "load_ms": round((time.perf_counter() - t0) * 1e3)},
                )
                return engine
        except WorkerError as exc:
            entry.error = exc.message
            self._on_load(spec.id, False)
            raise
        finally:
            entry.loading = None
            self._changed.set()

    def _new_engine(self, entry: _Entry) -> Engine:
        if not entry.embeds:
            return self._make_engine(entry.spec)
        if self._make_embedder is None:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"model '{entry.spec.id}' cannot embed on this worker",
                param="model",
            )
        return self._make_embedder(entry.spec)

    async def _make_room(self, entry: _Entry) -> None:
        """Unload idle models (least recently used first) while ``entry`` would be one too
        many or its memory does not fit; wait a while for a busy one to go idle."""
        deadline = time.monotonic() + self._busy_wait_s
        while True:
            others = [e for e in self._entries.values() if e.engine is not None and e is not entry]
            available, need = self._available(), entry.need
            if need is not None and available is not None:
                freeable = sum(e.need.total for e in others if e.need is not None)
                if need.total > available + freeable:  # too big even alone: unload nothing
                    raise WorkerError(
                        ErrorCode.MODEL_TOO_LARGE,
                        f"model '{entry.spec.id}' does not fit in memory: "
                        + need.describe(available),
                        param="model",
                    )
            too_many = len(others) >= self.max_loaded
            short = need is not None and available is not None and need.total > available
            if not too_many and not short:
                return
            idle = sorted((e for e in others if e.users == 0), key=lambda e: e.last_used)
            if idle:
                await self._unload(idle[0])
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(
                    ErrorCode.OVERLOADED,
                    f"model '{entry.spec.id}' cannot be loaded now: the loaded models are all "
                    f"busy (at most {self.max_loaded} are loaded at once)",
                    retry_after=5,
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def _unload(self, entry: _Entry) -> None:
        engine, entry.engine = entry.engine, None
        entry.unload_pending = False
        self._stop_timer(entry)
        if engine is not None:
            log.info("model unloaded", extra={"model": entry.spec.id})
            await engine.close()
        self._changed.set()

    async def _expire(self, entry: _Entry, stopped: bool = False) -> None:
        async with self._lock:
            if (entry.users == 0 or stopped) and entry.engine is not None:
                await self._unload(entry)

    def _let_go(self, entry: _Entry, keep_alive: float | None) -> None:
        entry.users -= 1
        entry.last_used = time.monotonic()
        entry.keep_alive = keep_alive
        if entry.users == 0 and not self._closed:
            self._idle(entry)
        self._changed.set()

    def _idle(self, entry: _Entry) -> None:
        """Start the countdown of a model nobody uses."""
        self._stop_timer(entry)
        seconds = 0.0 if entry.unload_pending else entry.keep_alive
        if seconds is None:
            seconds = entry.spec.keep_alive(self._keep_alive)
        if math.isinf(seconds):
            return
        entry.expires_at = time.time() + seconds
        loop = asyncio.get_running_loop()
        entry.timer = loop.call_later(seconds, lambda: self._spawn(self._expire(entry)))

    def _stop_timer(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.expires_at = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _key(spec: ModelSpec, embeds: bool) -> str:
    """The entry of ``spec``'s engine: its id, or a second one for a generative model held
    for embeddings."""
    return spec.id if embeds == spec.embeds_only else f"{spec.id}#embeds"


def _load_failed(spec: ModelSpec, exc: ModelLoadError) -> WorkerError:
    return WorkerError(
        ErrorCode.MODEL_LOAD_FAILED,
        f"model '{spec.id}' could not be loaded: {_pathless(str(exc))}",
        param="model",
    )


_PATH = re.compile(r"(?:/[^\s/:'\"]+)+/?")


def _pathless(message: str) -> str:
    """``message`` with each file path cut to its last part (no directory leaks out)."""
    return _PATH.sub(lambda m: Path(m.group()).name or "/", message)
