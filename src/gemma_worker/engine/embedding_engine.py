"""The embedding engine: one thread owns an embedding context and packs the inputs of every
waiting request into each ``llama_decode`` (one sequence per input, round-robin across
requests: :mod:`gemma_worker.core.embed_batching`).

It takes turns at the process's :class:`~.compute_gate.ComputeGate` with the generation
engines; beside a busy one its batches are cut short, so that streams keep their pace while a
large embedding request runs. It is an :class:`~.interface.Engine` for the model manager
(loaded, listed, unloaded like any model); it does not generate.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gemma_worker.core.embed_batching import EmbedPacer, pack
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.engine.compute_gate import ComputeGate
from gemma_worker.engine.embed_job import EmbeddingHandle, EmbeddingSpec, EmbedJob
from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.interface import EngineState, EngineStats
from gemma_worker.engine.job import GenerationHandle, GenerationSpec
from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.llama import ModelInfo, ModelLoadError
from gemma_worker.engine.llama_embed import MAX_SEQS, EmbeddingModel, Pooling
from gemma_worker.engine.model_files import ModelIdentity
from gemma_worker.engine.priority import at_low_priority
from gemma_worker.engine.prompt import PromptRenderer

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Inputs up to this many characters in all are tokenized on the event loop (about 10 us a
#: sentence), longer ones on the vocabulary thread.
_INLINE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class EmbeddingConfig:
    """What the embedding engine needs. ``locate`` finds (or, for a built-in model, makes)
    the GGUF; ``pooling`` ``None`` is the GGUF's own; ``max_input_tokens`` is the longest
    input (the model's training context at most), ``batch_tokens`` the largest batch."""

    name: str
    locate: Callable[[], Path]
    pooling: Pooling | None
    max_input_tokens: int
    batch_tokens: int
    max_pending: int
    n_threads: int | None
    n_gpu_layers: int
    kernels: KernelChoices
    gate: ComputeGate
    #: Beside another engine's stream, its token gap stays within this many times its own.
    gap_factor: float = 2.0


class _Stop:
    """Inbox message: shut down."""


class _Wake:
    """Inbox message: something changed (a cancel)."""


def _not_generative(name: str) -> WorkerError:
    return WorkerError(
        ErrorCode.INVALID_REQUEST,
        f"model '{name}' is an embedding model: it does not generate text",
        param="model",
    )


def _not_unicode() -> WorkerError:
    return WorkerError(
        ErrorCode.INVALID_REQUEST, "the text is not valid Unicode (a lone surrogate)"
    )


class EmbeddingEngine:
    """Embeds batches of inputs on its own thread (see the module's docstring)."""

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self._state = EngineState.LOADING
        self._inbox: queue.SimpleQueue[EmbedJob | _Stop | _Wake] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._model: EmbeddingModel | None = None
        self._identity: ModelIdentity | None = None
        self._lock = threading.Lock()
        #: Held while the event loop tokenizes inline and while the model is freed.
        self._free_lock = threading.Lock()
        self._freed = False
        self._pending = 0
        self._closed = False
        self._jobs: list[EmbedJob] = []
        self._rotation = 0
        self._pacer = EmbedPacer(config.gap_factor, config.batch_tokens)
        self._vocab_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-vocab")

    # --- Engine protocol --------------------------------------------------------------------
    @property
    def state(self) -> EngineState:
        """Current lifecycle state."""
        return self._state

    @property
    def info(self) -> ModelInfo | None:
        """The loaded model's description."""
        return None if self._model is None else self._model.info

    @property
    def identity(self) -> ModelIdentity | None:
        """Which model this is (``None`` until it is loaded)."""
        return self._identity if self._model is not None else None

    @property
    def renderer(self) -> PromptRenderer:
        """No chat template: an embedding model renders nothing."""
        return PromptRenderer(None, bos_token="")

    @property
    def n_ctx(self) -> int:
        """The longest input, in tokens."""
        model = self._model
        return self.config.max_input_tokens if model is None else model.max_input

    @property
    def n_embd(self) -> int:
        """The vectors' length (0 until loaded)."""
        return 0 if self._model is None else self._model.n_embd

    @property
    def pooling(self) -> Pooling | None:
        """How inputs are pooled (``None`` until loaded)."""
        return None if self._model is None else self._model.pooling

    @property
    def end_tokens(self) -> list[int]:
        """What ends every tokenized input (kept when an input is truncated)."""
        return [] if self._model is None else self._model.end_tokens

    async def start(self) -> None:
        """Load the model on the engine thread; :class:`ModelLoadError` on failure."""
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(loop, loaded), name="embed-engine", daemon=True
        )
        self._thread.start()
        await loaded

    def submit(self, spec: GenerationSpec) -> GenerationHandle:
        """Refused: this model does not generate."""
        raise _not_generative(self.config.name)

    async def compile_grammar(self, gbnf: str) -> Grammar:
        """Refused: this model does not generate."""
        raise _not_generative(self.config.name)

    def forget(self, session: str) -> None:
        """Nothing is kept per session."""

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """``text`` as token ids."""

        def run(m: EmbeddingModel) -> list[int]:
            return m.tokenize_with(text, add_special=add_special, parse_special=parse_special)

        return await self._on_vocab_thread(run)

    async def tokenize_inputs(self, texts: list[str]) -> list[list[int]]:
        """Each text as the model reads it (see :meth:`EmbeddingModel.tokenize`). Short texts
        are tokenized right here (a few microseconds, less than the hop to the vocabulary
        thread: llama.cpp's vocabulary is read-only once loaded, and llama-server tokenizes
        beside its decodes too); long ones on the vocabulary thread."""

        def run(m: EmbeddingModel) -> list[list[int]]:
            return [m.tokenize(t) for t in texts]

        if sum(map(len, texts)) > _INLINE_CHARS:
            return await self._on_vocab_thread(run)
        with self._free_lock:
            model = self._model
            if model is None or self._freed or self._state is not EngineState.READY:
                raise WorkerError(ErrorCode.OVERLOADED, "the model is not ready", retry_after=1)
            try:
                return run(model)
            except UnicodeEncodeError as exc:
                raise _not_unicode() from exc

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's bytes; ``INVALID_REQUEST`` for an id outside the vocabulary."""
        self.check_tokens(tokens)
        return await self._on_vocab_thread(lambda m: [m.special_piece(t) for t in tokens])

    def check_tokens(self, tokens: list[int] | tuple[int, ...], where: str = "input") -> None:
        """``INVALID_REQUEST`` naming ``where`` for an id outside the vocabulary."""
        n_vocab = 0 if self._model is None else self._model.n_vocab
        bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"{where}: token id {bad} is not in the vocabulary (0-{n_vocab - 1})",
                param=where,
            )

    def embed(self, spec: EmbeddingSpec) -> EmbeddingHandle:
        """Queue ``spec``; ``OVERLOADED`` at once when too many requests wait."""
        model = self._model
        if self._state is not EngineState.READY or model is None:
            raise WorkerError(ErrorCode.OVERLOADED, "the model is not ready", retry_after=1)
        loop = asyncio.get_running_loop()
        job = EmbedJob(spec, loop, loop.create_future(), model.n_embd)
        with self._lock:
            if self._closed:
                raise WorkerError(ErrorCode.OVERLOADED, "the model is not ready", retry_after=1)
            if self._pending >= self.config.max_pending:
                raise WorkerError(
                    ErrorCode.OVERLOADED,
                    "too many embedding requests are waiting; retry shortly",
                    retry_after=1,
                )
            self._pending += 1
            self._inbox.put(job)
        return EmbeddingHandle(job, self._wake)

    def stats(self) -> EngineStats:
        """Current load: requests being embedded count as active."""
        return EngineStats(
            active=len(self._jobs),
            queued=max(0, self._pending - len(self._jobs)),
            slots=0,
            max_queue=self.config.max_pending,
        )

    async def close(self) -> None:
        """Fail what waits, stop the thread and free the model."""
        await asyncio.to_thread(self._vocab_thread.shutdown, True, cancel_futures=True)
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(_Stop())
            await asyncio.to_thread(self._thread.join)
        self._state = EngineState.CLOSED

    def _wake(self) -> None:
        self._inbox.put(_Wake())

    async def _on_vocab_thread(self, fn: Callable[[EmbeddingModel], T]) -> T:
        model = self._model
        not_ready = WorkerError(ErrorCode.OVERLOADED, "the model is not ready", retry_after=1)
        if model is None or self._state is not EngineState.READY:
            raise not_ready
        try:
            return await asyncio.get_running_loop().run_in_executor(self._vocab_thread, fn, model)
        except RuntimeError as exc:
            raise not_ready from exc
        except UnicodeEncodeError as exc:
            raise _not_unicode() from exc

    # --- engine thread ----------------------------------------------------------------------
    def _thread_main(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future[None]) -> None:
        def report(exc: BaseException | None) -> None:
            if not loaded.done():
                loaded.set_result(None) if exc is None else loaded.set_exception(exc)

        config = self.config
        try:
            path = config.locate()
            self._identity = ModelIdentity(config.name, path)
            self._model = at_low_priority(
                lambda: EmbeddingModel(
                    path,
                    pooling=config.pooling,
                    max_input_tokens=config.max_input_tokens,
                    n_batch=config.batch_tokens,
                    n_threads=config.n_threads,
                    n_gpu_layers=config.n_gpu_layers,
                    kernels=config.kernels,
                )
            )
        except ModelLoadError as exc:
            self._state = EngineState.FAILED
            loop.call_soon_threadsafe(report, exc)
            return
        except Exception as exc:
            log.exception("embedding model load failed")
            self._state = EngineState.FAILED
            loop.call_soon_threadsafe(report, ModelLoadError(f"model load failed: {exc}"))
            return
        self._pacer.max_tokens = self._model.n_batch
        self._state = EngineState.READY
        loop.call_soon_threadsafe(report, None)
        crash: WorkerError | None = None
        try:
            self._run()
        except Exception:
            log.exception("embedding engine crashed")
            self._state = EngineState.FAILED
            crash = WorkerError(ErrorCode.INFERENCE_ERROR, "the embedding engine stopped")
        finally:
            self._shutdown(crash)

    def _run(self) -> None:
        while True:
            if self._take_messages(block=not self._jobs):
                return
            for job in [j for j in self._jobs if j.cancelled]:
                self._end(job)
                job.fail(
                    WorkerError(ErrorCode.OVERLOADED, "the request was cancelled", retry_after=1)
                )
            if self._jobs:
                self._batch()

    def _take_messages(self, block: bool) -> bool:
        try:
            msg = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return False
        while True:
            if isinstance(msg, _Stop):
                return True
            if isinstance(msg, EmbedJob):
                self._jobs.append(msg)
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return False

    def _batch(self) -> None:
        model = self._model
        assert model is not None
        gate = self.config.gate
        budget = self._pacer.budget(gate.others_turn(self.config.name))
        start = self._rotation % len(self._jobs)
        self._rotation += 1
        picks = pack(
            [j.pending for j in self._jobs],
            max_tokens=min(budget, model.n_batch),
            max_seqs=MAX_SEQS,
            start=start,
        )
        inputs = [list(self._jobs[p.request].spec.inputs[p.index]) for p in picks]
        n_tokens = sum(len(t) for t in inputs)
        now = time.perf_counter()
        with gate.turn(self.config.name):
            t0 = time.perf_counter()
            vectors = model.embed(inputs)
            seconds = time.perf_counter() - t0
        self._pacer.observe(n_tokens, seconds)
        if vectors is None:
            log.error("embedding decode failed", extra={"n_tokens": n_tokens})
            error = WorkerError(ErrorCode.INFERENCE_ERROR, "the model failed to embed")
            for job in {self._jobs[p.request] for p in picks}:
                self._end(job)
                job.fail(error)
            return
        done: list[EmbedJob] = []
        for row, pick in enumerate(picks):
            job = self._jobs[pick.request]
            if job.started_at is None:
                job.started_at = now
            job.vectors[pick.index] = vectors[row]
            job.n_done += 1
            if job.n_done == len(job.spec.inputs):
                done.append(job)
        for job in done:
            self._end(job)
            job.finish()

    def _end(self, job: EmbedJob) -> None:
        self._jobs.remove(job)
        with self._lock:
            self._pending -= 1

    def _shutdown(self, crash: WorkerError | None) -> None:
        error = crash or WorkerError(ErrorCode.OVERLOADED, "the model was unloaded", retry_after=1)
        with self._lock:
            self._closed = True
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(msg, EmbedJob):
                self._jobs.append(msg)
        for job in list(self._jobs):
            self._end(job)
            job.fail(error)
        if self._model is not None:
            self._vocab_thread.shutdown(wait=True, cancel_futures=True)
            with self._free_lock:
                self._freed = True
                self._model.close()
        if crash is None:
            self._state = EngineState.CLOSED
