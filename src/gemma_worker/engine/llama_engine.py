"""The batching engine: one thread owns llama.cpp and decodes every running request together.

Each step is one ``llama_decode`` over a batch with one sequence per running request (plus a
chunk of prompt processing). New requests join between steps; finished, cancelled or
disconnected ones leave at once and their KV cells are freed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gemma_worker.core.conversation import Conversation, turns_to_drop
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.events import FinishReason
from gemma_worker.core.prefix import match_prefix, token_boundaries
from gemma_worker.core.request import SamplingParams
from gemma_worker.core.scheduling import (
    AdmissionQueue,
    QueueFullError,
    SlotPool,
    SlotView,
    StepEntry,
    plan_step,
)
from gemma_worker.engine.channel import EventChannel
from gemma_worker.engine.job import GenerationHandle, Job
from gemma_worker.engine.kv_files import KVFiles
from gemma_worker.engine.llama import Batch, LlamaModel, ModelInfo, ModelLoadError, Sampler
from gemma_worker.engine.messages import (
    EngineEvent,
    Failed,
    Finished,
    Queued,
    Started,
    Text,
    Trimmed,
)
from gemma_worker.engine.model_files import resolve_model_path
from gemma_worker.engine.prompt import Prompt, PromptRenderer
from gemma_worker.engine.protocol import EngineState, EngineStats
from gemma_worker.engine.sequence import SequenceState

log = logging.getLogger(__name__)

#: How long the engine waits before re-checking sequences paused for a slow client.
_PAUSE_POLL_S = 0.005

#: Shorter caches are not saved to disk: processing them again takes well under half a
#: second, less than the disk churn of saving every one-shot request's cache is worth.
KV_DISK_MIN_TOKENS = 256


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the engine needs from the settings."""

    model_path: Path | None
    n_ctx: int
    parallel: int
    n_batch: int
    prefill_chunk: int
    max_queue: int
    n_threads: int | None
    n_gpu_layers: int
    stream_buffer: int
    flash_attn: bool = False
    kv_unified: bool = False
    max_input_tokens: int | None = None
    #: Where idle sessions' KV caches are saved when their slot is taken or the worker stops
    #: (``None`` or a zero budget: never).
    kv_dir: Path | None = None
    kv_disk_bytes: int = 0


class _Stop:
    """Inbox message: shut the engine down."""


class _Wake:
    """Inbox message: something changed (a cancel); re-check."""


@dataclass(frozen=True, slots=True)
class _Forget:
    """Inbox message: drop the KV cache kept for ``key``."""

    key: str


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An accepted job with its rendered, tokenised prompt."""

    job: Job
    prompt: Prompt
    tokens: list[int]


_Message = Job | _Stop | _Wake | _Forget


class LlamaEngine:
    """:class:`~gemma_worker.engine.protocol.Engine` on llama.cpp with continuous batching."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._state = EngineState.LOADING
        self._inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._closed = False  # set by the engine thread before it drains the inbox for good
        self._pending_lock = threading.Lock()
        self._model: LlamaModel | None = None
        self._renderer: PromptRenderer | None = None
        self.model_path: Path | None = None
        # Engine-thread state.
        self._slots = SlotPool(config.parallel)
        self._waiting: AdmissionQueue[_Prepared] = AdmissionQueue(
            config.max_queue + config.parallel
        )
        self._seqs: dict[int, SequenceState] = {}
        # free slot -> (session key, tokens) of the cache it keeps
        self._kv: dict[int, tuple[str, list[int]]] = {}
        self._kv_files: KVFiles | None = None
        self._samplers: dict[int, Sampler] = {}
        self._order = 0

    # --- Engine protocol (event loop side) --------------------------------------------------
    @property
    def state(self) -> EngineState:
        """Current lifecycle state."""
        return self._state

    @property
    def info(self) -> ModelInfo | None:
        """The loaded model's description."""
        return None if self._model is None else self._model.info

    @property
    def renderer(self) -> PromptRenderer:
        """Prompt formatting for the loaded model."""
        if self._renderer is None:
            raise WorkerError(ErrorCode.OVERLOADED, "the model is still loading")
        return self._renderer

    @property
    def n_ctx(self) -> int:
        """Context tokens per request."""
        return self.config.n_ctx if self._model is None else self._model.n_ctx_seq

    async def start(self) -> None:
        """Load the model on the engine thread; raise :class:`ModelLoadError` on failure."""
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(loop, loaded), name="gemma-engine", daemon=True
        )
        self._thread.start()
        await loaded

    def submit(
        self,
        conversation: Conversation,
        params: SamplingParams,
        request_id: str,
        cache_key: str | None = None,
    ) -> GenerationHandle:
        """Queue a generation; ``OVERLOADED`` at once when slots and queue are full.

        With a ``cache_key`` (a session id) the KV cache is kept after the generation, and the
        next generation with that key reuses whatever prefix of it its prompt shares.
        """
        if self._state is not EngineState.READY:
            raise WorkerError(ErrorCode.OVERLOADED, "the model is not ready")
        with self._pending_lock:
            if self._closed:
                raise WorkerError(ErrorCode.OVERLOADED, "the model is not ready")
            if self._pending >= self.config.parallel + self.config.max_queue:
                raise WorkerError(
                    ErrorCode.OVERLOADED, "the worker is at capacity; retry later", retry_after=1
                )
            self._pending += 1
        job = Job(
            request_id=request_id,
            conversation=conversation,
            params=params,
            channel=EventChannel(asyncio.get_running_loop(), self.config.stream_buffer),
            cache_key=cache_key,
        )
        self._inbox.put(job)
        return GenerationHandle(job, self._wake)

    def stats(self) -> EngineStats:
        """Current load (a racy snapshot, fine for reporting)."""
        return EngineStats(
            active=len(self._seqs),
            queued=len(self._waiting),
            slots=self.config.parallel,
            max_queue=self.config.max_queue,
        )

    async def close(self) -> None:
        """Cancel everything, stop the thread and free the model."""
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(_Stop())
            await asyncio.to_thread(self._thread.join)
        self._state = EngineState.CLOSED

    def forget(self, cache_key: str) -> None:
        """Drop the KV cache kept for ``cache_key`` (its session is gone)."""
        self._inbox.put(_Forget(cache_key))

    def _wake(self) -> None:
        self._inbox.put(_Wake())

    # --- engine thread ----------------------------------------------------------------------
    def _thread_main(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future[None]) -> None:
        def report(exc: BaseException | None) -> None:
            if loaded.done():
                return
            if exc is None:
                loaded.set_result(None)
            else:
                loaded.set_exception(exc)

        try:
            t0 = time.perf_counter()
            self.model_path = resolve_model_path(self.config.model_path)
            model = LlamaModel(
                self.model_path,
                n_ctx_seq=self.config.n_ctx,
                n_seq=self.config.parallel,
                n_batch=self.config.n_batch,
                n_threads=self.config.n_threads,
                n_gpu_layers=self.config.n_gpu_layers,
                flash_attn=self.config.flash_attn,
                kv_unified=self.config.kv_unified,
            )
            template = model.chat_template
            self._renderer = PromptRenderer(
                template,
                bos_token=model.bos_text,
                special_tokens=model.special_texts(),
                prefer_chat=model.info.instruction_tuned,
            )
            self._model = model
            self._batch = Batch(max(self.config.n_batch, self.config.parallel))
            if self.config.kv_dir is not None and self.config.kv_disk_bytes > 0:
                self._kv_files = KVFiles(
                    self.config.kv_dir, self.config.kv_disk_bytes, self._fingerprint()
                )
        except ModelLoadError as exc:
            self._state = EngineState.FAILED
            loop.call_soon_threadsafe(report, exc)
            return
        except Exception as exc:
            log.exception("model load failed")
            self._state = EngineState.FAILED
            loop.call_soon_threadsafe(report, ModelLoadError(f"model load failed: {exc}"))
            return
        log.info(
            "model loaded",
            extra={
                "model": model.info.name,
                "load_ms": round((time.perf_counter() - t0) * 1e3, 1),
                "slots": self.config.parallel,
                "n_ctx_per_slot": model.n_ctx_seq,
            },
        )
        self._state = EngineState.READY
        loop.call_soon_threadsafe(report, None)
        crash: WorkerError | None = None
        try:
            self._run()
        except Exception:
            log.exception("engine loop crashed")
            self._state = EngineState.FAILED
            crash = WorkerError(ErrorCode.INFERENCE_ERROR, "the inference engine stopped")
        finally:
            self._shutdown(crash)

    def _run(self) -> None:
        while True:
            busy = bool(self._seqs) or len(self._waiting) > 0
            if self._handle_messages(block=not busy):
                return
            self._reap_cancelled()
            self._admit()
            plan = plan_step(self._views(), self.config.n_batch, self.config.prefill_chunk)
            if plan:
                self._step(plan)
            elif self._seqs:
                # Every running sequence waits for its client; poll until one catches up.
                try:
                    msg = self._inbox.get(timeout=_PAUSE_POLL_S)
                except queue.Empty:
                    continue
                self._inbox.put(msg)

    def _handle_messages(self, block: bool) -> bool:
        """Take inbox messages; return True when asked to stop."""
        try:
            msg: _Message | None = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return False
        while msg is not None:
            if isinstance(msg, _Stop):
                return True
            if isinstance(msg, Job):
                self._accept(msg)
            elif isinstance(msg, _Forget):
                self._forget(msg.key)
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                msg = None
        return False

    def _accept(self, job: Job) -> None:
        if job.cancelled:
            self._final(job, _cancelled_before_start(job, 0))
            return
        try:
            prepared = self._prepare(job)
        except WorkerError as exc:
            self._fail(job, exc)
            return
        except Exception:
            log.exception("prompt preparation failed", extra={"request_id": job.request_id})
            self._fail(job, WorkerError(ErrorCode.INFERENCE_ERROR, "tokenization failed"))
            return
        must_wait = self._slots.n_free <= len(self._waiting)
        try:
            position = self._waiting.push(prepared)
        except QueueFullError:
            self._fail(job, WorkerError(ErrorCode.OVERLOADED, "the admission queue is full"))
            return
        if must_wait:
            # Requests ahead of this one that will take the free slots are not "in the queue".
            job.channel.put(Queued(position - self._slots.n_free))

    def _prepare(self, job: Job) -> _Prepared:
        """Render and tokenise the prompt, leaving out the oldest turns if the history does
        not fit; ``CONTEXT_OVERFLOW`` when even the new input alone does not."""
        model, renderer = self._model, self._renderer
        assert model is not None and renderer is not None
        conv = job.conversation
        limit = self.config.max_input_tokens
        if limit is not None:
            n_input = len(model.tokenize(conv.input, add_special=False, parse_special=False))
            if n_input > limit:
                raise WorkerError(
                    ErrorCode.INVALID_REQUEST,
                    f"input is {n_input} tokens; the limit is {limit}",
                    n_input_tokens=n_input,
                    max_input_tokens=limit,
                )
        n_ctx = model.n_ctx_seq
        budget = n_ctx - job.params.max_tokens
        built: dict[int, tuple[Prompt, list[int]]] = {}

        def build(drop: int) -> tuple[Prompt, list[int]]:
            if drop not in built:
                prompt = renderer.render(conv.without_oldest(drop))
                tokens = model.tokenize(
                    prompt.text, add_special=prompt.add_special, parse_special=prompt.parse_special
                )
                built[drop] = (prompt, tokens)
            return built[drop]

        n_history = len(conv.history)
        drop = turns_to_drop(n_history, lambda d: len(build(d)[1]) <= budget)
        if drop is None:
            n_prompt = len(build(n_history)[1])
            what = "the input alone" if n_history else "prompt"
            raise WorkerError(
                ErrorCode.CONTEXT_OVERFLOW,
                f"{what} ({n_prompt} tokens) + max_tokens ({job.params.max_tokens}) "
                f"exceeds the context of {n_ctx} tokens",
                n_prompt_tokens=n_prompt,
                max_tokens=job.params.max_tokens,
                n_ctx=n_ctx,
            )
        if drop:
            job.channel.put(Trimmed(dropped_turns=drop, kept_turns=n_history - drop))
        prompt, tokens = build(drop)
        return _Prepared(job, prompt, tokens)

    def _admit(self) -> None:
        assert self._model is not None
        admitted = False
        while len(self._waiting) > 0:
            acquired = self._slots.acquire(self._waiting.peek().job.cache_key)
            if acquired is None:
                break
            slot, warm = acquired
            prepared = self._waiting.pop()
            job = prepared.job
            tokens, n_cached = prepared.tokens, 0
            kept = self._kv.pop(slot, None)
            if not warm and kept is not None:
                self._stash(slot, *kept)  # another session's cache: keep it on disk
            cached = kept[1] if warm and kept else self._restore(slot, job.cache_key)
            if cached:
                tokens, n_cached = self._reuse(slot, prepared, cached)
            else:
                self._model.clear_sequence(slot)
            self._order += 1
            seq = SequenceState(
                job, slot, self._order, tokens, self._model.n_ctx_seq, n_cached=n_cached
            )
            self._seqs[slot] = seq
            self._samplers[slot] = Sampler(job.params, self._model.info.n_vocab)
            job.channel.put(Started(len(tokens), n_cached))
            admitted = True
        if admitted:  # everyone still waiting moved up
            for position, waiting in enumerate(self._waiting, start=1):
                waiting.job.channel.put(Queued(position))

    def _reuse(self, slot: int, prepared: _Prepared, cached: list[int]) -> tuple[list[int], int]:
        """The prompt tokens for ``prepared`` in a slot whose KV cache holds ``cached``, and how
        many of them are already there. Falls back to a cold start (the whole prompt, nothing
        cached) when too little matches or the cache cannot continue."""
        model = self._model
        assert model is not None
        prompt = prepared.prompt
        text = prompt.text.encode("utf-8")
        head = model.bos_head if prompt.add_special else []
        match = match_prefix(
            cached,
            head,
            text,
            model.special_piece,
            (lambda _t: True) if prompt.parse_special else (lambda t: not model.is_control(t)),
            boundaries=token_boundaries(prepared.tokens, len(head), model.special_piece),
        )
        if match.n_tokens > 0:
            rest = model.tokenize(
                text[match.n_bytes :].decode("utf-8"),
                add_special=False,
                parse_special=prompt.parse_special,
            )
            tokens = cached[: match.n_tokens] + rest
            # At least one prompt token must be decoded to get the logits of the next one.
            n_cached = min(match.n_tokens, len(tokens) - 1)
            fits = len(tokens) + prepared.job.params.max_tokens <= model.n_ctx_seq
            if fits and n_cached > 0 and model.keep_prefix(slot, n_cached):
                return tokens, n_cached
        model.clear_sequence(slot)
        return prepared.tokens, 0

    def _stash(self, slot: int, key: str, tokens: list[int]) -> None:
        """Save the cache ``slot`` holds for session ``key`` to disk (when enabled)."""
        if self._kv_files is None or self._model is None or len(tokens) < KV_DISK_MIN_TOKENS:
            return
        t0 = time.perf_counter()
        self._kv_files.save(key, tokens, self._model.save_sequence(slot))
        log.debug(
            "session cache saved",
            extra={"tokens": len(tokens), "ms": round((time.perf_counter() - t0) * 1e3, 1)},
        )

    def _restore(self, slot: int, key: str | None) -> list[int] | None:
        """Load session ``key``'s saved cache into ``slot``; its tokens, or ``None``."""
        if self._kv_files is None or self._model is None or key is None:
            return None
        entry = self._kv_files.take(key)
        if entry is None:
            return None
        if not self._model.load_sequence(slot, entry.state):
            log.info("a saved session cache did not load; processing the history again")
            return None
        return entry.tokens

    def _fingerprint(self) -> str:
        """What a saved cache must match to be loaded: model file, context layout."""
        assert self.model_path is not None and self._model is not None
        c = self.config
        size = self.model_path.stat().st_size
        return (
            f"{self.model_path.resolve()}|{size}|{self._model.n_ctx_seq}|{c.n_ctx}|"
            f"{c.flash_attn}|{c.kv_unified}|{self._model.n_swa}"
        )

    def _forget(self, key: str) -> None:
        assert self._model is not None
        for seq in self._seqs.values():  # running now: do not keep its cache when it ends
            if seq.job.cache_key == key:
                seq.keep_cache = False
        if self._kv_files is not None:
            self._kv_files.forget(key)
        slot = self._slots.forget(key)
        if slot is not None:
            self._kv.pop(slot, None)
            self._model.clear_sequence(slot)

    def _reap_cancelled(self) -> None:
        for seq in [s for s in self._seqs.values() if s.job.cancelled]:
            self._finish(seq, "cancelled")
        for entry in [e for e in self._waiting if e.job.cancelled]:
            self._waiting.remove(entry)
            self._final(entry.job, _cancelled_before_start(entry.job, len(entry.tokens)))

    def _views(self) -> list[SlotView]:
        return [
            SlotView(
                slot=s.slot,
                order=s.order,
                prefill_remaining=s.prefill_remaining,
                paused=s.next_token is not None and s.job.channel.full(),
            )
            for s in self._seqs.values()
        ]

    def _step(self, plan: list[StepEntry]) -> None:
        model = self._model
        assert model is not None
        batch = self._batch
        batch.clear()
        outputs: list[tuple[SequenceState, int]] = []
        for entry in plan:
            seq = self._seqs[entry.slot]
            if entry.prefill:
                chunk = seq.prefill_chunk(entry.n_tokens)
                ends_prompt = seq.n_past + len(chunk) == len(seq.prompt_tokens)
                last = len(chunk) - 1
                for i, token in enumerate(chunk):
                    idx = batch.add(token, seq.n_past + i, seq.slot, ends_prompt and i == last)
                seq.n_past += len(chunk)
                if ends_prompt:
                    outputs.append((seq, idx))
            else:
                assert seq.next_token is not None
                idx = batch.add(seq.next_token, seq.n_past, seq.slot, True)
                seq.decoded.append(seq.next_token)
                seq.n_past += 1
                seq.next_token = None
                outputs.append((seq, idx))
        rc = model.decode(batch)
        if rc != 0:
            log.error("llama_decode failed", extra={"rc": rc, "n_tokens": batch.n_tokens})
            error = WorkerError(ErrorCode.INFERENCE_ERROR, "the model failed to decode")
            for entry in plan:
                seq = self._seqs[entry.slot]
                self._release(seq)
                self._fail(seq.job, error)
            return
        for seq, idx in outputs:
            token = self._samplers[seq.slot].sample(model.ctx, idx)
            text, reason = seq.on_token(model.piece(token), model.is_eog(token))
            if text:
                seq.job.channel.put(Text(text))
            if reason is not None:
                self._finish(seq, reason)
            else:
                seq.next_token = token

    def _release(self, seq: SequenceState, *, keep_cache: bool = False) -> None:
        """Free the slot; with ``keep_cache`` a session's KV cache stays for its next turn."""
        assert self._model is not None
        self._samplers.pop(seq.slot).free()
        del self._seqs[seq.slot]
        key = seq.job.cache_key if keep_cache and seq.keep_cache else None
        if key is None:
            self._model.clear_sequence(seq.slot)
        else:
            for other in [s for s, (k, _) in self._kv.items() if k == key]:
                del self._kv[other]  # an older copy: the pool no longer hands it out
            self._kv[seq.slot] = (key, seq.kv_tokens())
        self._slots.release(seq.slot, key)

    def _finish(self, seq: SequenceState, reason: FinishReason) -> None:
        self._release(seq, keep_cache=True)
        self._final(seq.job, seq.finished(reason))

    def _fail(self, job: Job, error: WorkerError) -> None:
        self._final(job, Failed(error))

    def _final(self, job: Job, event: EngineEvent) -> None:
        job.channel.put(event)
        with self._pending_lock:
            self._pending -= 1
        if isinstance(event, Finished):
            log.info(
                "generation finished",
                extra={
                    "request_id": job.request_id,
                    "finish_reason": event.finish_reason,
                    "prompt_tokens": event.prompt_tokens,
                    "completion_tokens": event.completion_tokens,
                    "ttft_ms": None if event.ttft_ms is None else round(event.ttft_ms, 1),
                    "total_ms": round(event.total_ms, 1),
                },
            )
        elif isinstance(event, Failed):
            log.info(
                "generation failed",
                extra={"request_id": job.request_id, "code": str(event.error.code)},
            )

    def _shutdown(self, crash: WorkerError | None) -> None:
        """End every request (cancelled, or failed after a crash) and free the model."""
        for seq in list(self._seqs.values()):
            if crash is None:
                self._finish(seq, "cancelled")
            else:
                self._release(seq)
                self._fail(seq.job, crash)
        with self._pending_lock:
            self._closed = True  # no submit can slip in after the inbox is drained below
        pending = [(p.job, len(p.tokens)) for p in self._waiting]
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(msg, Job):
                pending.append((msg, 0))
        for job, n_prompt_tokens in pending:
            if crash is None:
                self._final(job, _cancelled_before_start(job, n_prompt_tokens))
            else:
                self._fail(job, crash)
        if crash is None:  # keep idle sessions' caches for the next start
            for slot, (key, tokens) in list(self._kv.items()):
                self._stash(slot, key, tokens)
        self._batch.free()
        if self._model is not None:
            self._model.close()
        if crash is None:
            self._state = EngineState.CLOSED


def _cancelled_before_start(job: Job, n_prompt_tokens: int) -> Finished:
    waited = (time.perf_counter() - job.submitted_at) * 1e3
    return Finished(
        finish_reason="cancelled",
        prompt_tokens=n_prompt_tokens,
        completion_tokens=0,
        queue_ms=waited,
        ttft_ms=None,
        tokens_per_second=None,
        total_ms=waited,
    )
