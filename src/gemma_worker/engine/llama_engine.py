"""The batching engine: one thread owns llama.cpp and decodes every running request together.

Each step is one ``llama_decode`` over a batch with one sequence per running request (plus a
chunk of prompt processing). New requests join between steps; finished, cancelled or
disconnected ones leave at once and their KV cells are freed.

Why one module of this size: it is the engine thread's state machine (inbox, admission
queue, running sequences, the step loop, shutdown), whose parts share that thread's state.
What can stand alone does, in its own module: the decisions (``core/scheduling``,
``core/fairness``, ``core/pacing``), slots and KV memory (:mod:`.kv_cache`), preparing a
prompt (:mod:`.preparation`), a sequence's text and stops (:mod:`.sequence`), sampling
(:mod:`.sampler`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.fairness import FairQueue, Shares, at_capacity
from gemma_worker.core.pacing import PrefillPacer
from gemma_worker.core.prefix import PrefixMatch, common_prefix, match_prefix
from gemma_worker.core.scheduling import (
    CachedPrefix,
    SlotView,
    StepEntry,
    plan_step,
)
from gemma_worker.core.speculation import plan_drafts
from gemma_worker.core.step_cost import StepCosts
from gemma_worker.core.usage import FinishReason, Timings, Usage
from gemma_worker.engine.allocator import pin_mmap_threshold
from gemma_worker.engine.channel import EventChannel
from gemma_worker.engine.config import EngineConfig
from gemma_worker.engine.grammar import Grammar, GrammarError, compile_grammar
from gemma_worker.engine.interface import EngineState, EngineStats
from gemma_worker.engine.job import GenerationHandle, GenerationSpec, Job
from gemma_worker.engine.kv_cache import KVCacheManager
from gemma_worker.engine.llama import Batch, LlamaModel, ModelInfo, ModelLoadError, ubatch_size
from gemma_worker.engine.messages import (
    EngineEvent,
    Failed,
    Finished,
    Queued,
    Started,
)
from gemma_worker.engine.model_files import ModelIdentity, resolve_model_path
from gemma_worker.engine.preparation import Prepared, least_answer, prepare
from gemma_worker.engine.priority import at_low_priority
from gemma_worker.engine.prompt import PromptRenderer
from gemma_worker.engine.prompt_tokens import SessionTokens
from gemma_worker.engine.sampler import Sampler, SamplingError
from gemma_worker.engine.sequence import SequenceState

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Vocabulary threads, and so preparations at once (the rest wait, fairly ordered).
_PREP_THREADS = 2

#: How long the engine waits before re-checking sequences paused for a slow client.
_PAUSE_POLL_S = 0.005

#: While an empty slot is free, another conversation's cache is reused only for a shared prefix
#: of at least this many tokens (beyond the BOS).
MIN_SHARED_PREFIX = 32
#: A request waits for a running one to compute the prompt head they share, and starts from a
#: copy of it, from this many tokens (the copy of a slot's KV buffers costs about as much as
#: computing a few dozen prompt tokens).
MIN_IN_FLIGHT_PREFIX = 64


class _Stop:
    """Inbox message: shut the engine down."""


class _Wake:
    """Inbox message: something changed (a cancel); re-check."""


@dataclass(frozen=True, slots=True)
class _Forget:
    """Inbox message: drop the KV cache kept for ``key``."""

    key: str


@dataclass(frozen=True, slots=True)
class _Evict:
    """Inbox message: every place is taken and ``client`` holds the most: its newest waiting
    request makes room for ``newcomer`` (which is refused if ``client`` has none waiting)."""

    client: str
    newcomer: Job


@dataclass(frozen=True, slots=True)
class _Ready:
    """Inbox message: ``job``'s preparation (on the vocabulary threads) is over: its prompt,
    or the error that refuses it."""

    job: Job
    prepared: Prepared | None
    error: WorkerError | None


_Message = Job | _Stop | _Wake | _Forget | _Ready | _Evict


#: Draft tokens verified in one step, at most (each needs its logits: 1 MiB with Gemma's
#: vocabulary, so the buffer is sized for this many beyond one output per slot).
STEP_DRAFTS = 64

#: The interpreter's thread switch interval while an engine runs (see ``start``).
_SWITCH_INTERVAL_S = 0.001


class LlamaEngine:
    """:class:`~gemma_worker.engine.interface.Engine` on llama.cpp with continuous batching."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._state = EngineState.LOADING
        self._inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._shares = Shares(config.parallel + config.max_queue, config.max_pending_per_client)
        self._closed = False  # set by the engine thread before it drains the inbox for good
        self._pending_lock = threading.Lock()
        self._model: LlamaModel | None = None
        self._renderer: PromptRenderer | None = None
        self._identity: ModelIdentity | None = None
        # Engine-thread state.
        self._kv: KVCacheManager | None = None
        #: Prepared requests waiting for a slot (``_shares`` bounds them with the rest).
        self._waiting: FairQueue[Prepared] = FairQueue(client_of=lambda p: p.job.spec.client)
        #: The running requests by slot, each with its sampler.
        self._seqs: dict[int, SequenceState] = {}
        #: Sessions' latest prompts, tokenized (used on the vocabulary threads).
        self._prompt_tokens: SessionTokens | None = None
        self._pacer = PrefillPacer(
            gap_factor=config.prefill_gap_factor, max_chunk=config.prefill_chunk
        )
        #: What a step without prompt tokens costs, by its passes' widths: decides where
        #: drafts pay.
        self._step_costs = StepCosts(
            equal_split=not config.kernels.kv_unified, n_ubatch=ubatch_size(config.n_batch)
        )
        self._draft_outputs = max(STEP_DRAFTS, config.max_draft) if config.speculation else 0
        self._order = 0
        self._gate_name = f"generate-{id(self):x}"
        # Vocabulary-only work (preparing prompts, compiling grammars, /tokenize) runs here,
        # beside the engine thread, so decoding never waits for it; it never touches the
        # context (llama.cpp's tokenizer only reads the vocabulary). Two threads: one long
        # preparation does not hold up another request's.
        self._vocab_thread = ThreadPoolExecutor(
            max_workers=_PREP_THREADS, thread_name_prefix="gemma-vocab"
        )
        #: Jobs waiting to be prepared, fairly ordered, and those being prepared on the
        #: vocabulary threads (at most ``_PREP_THREADS``: /tokenize and grammars get a turn);
        #: newcomers refused because no request of the largest holder could make room.
        self._to_prepare: FairQueue[Job] = FairQueue(client_of=lambda j: j.spec.client)
        self._preparing: set[Job] = set()
        self._refused: set[Job] = set()

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
    def identity(self) -> ModelIdentity | None:
        """Which model this is (``None`` until it is loaded)."""
        return self._identity if self._model is not None else None

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
        # The decode loop gives the GIL up for every llama.cpp call and takes it back after:
        # dozens of times a step. While another thread runs Python (a large grammar being
        # compiled, a long prompt rendered), each take-back waits up to the switch interval
        # (5 ms by default), which once made a step 7x slower; 1 ms bounds that.
        sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(loop, loaded), name="gemma-engine", daemon=True
        )
        self._thread.start()
        await loaded

    def submit(self, spec: GenerationSpec) -> GenerationHandle:
        """Queue a generation; ``OVERLOADED`` at once when slots and queue are full and its
        client holds the largest share of them (see :mod:`gemma_worker.core.fairness`)."""
        if self._state is not EngineState.READY:
            raise WorkerError(ErrorCode.OVERLOADED, "the model is not ready")
        job = Job(spec, EventChannel(asyncio.get_running_loop(), self.config.stream_buffer))
        with self._pending_lock:  # held while queueing: the shutdown's drain cannot miss it
            if self._closed:
                raise WorkerError(ErrorCode.OVERLOADED, "the model is not ready")
            evict = self._shares.take(spec.client)
            if evict is not None:
                self._inbox.put(_Evict(evict, job))
            self._inbox.put(job)
        return GenerationHandle(job, self._wake)

    async def _on_vocab_thread(self, fn: Callable[[LlamaModel], T]) -> T:
        model = self._model
        not_ready = WorkerError(ErrorCode.OVERLOADED, "the model is not ready", retry_after=1)
        if model is None or self._state is not EngineState.READY:
            raise not_ready
        try:
            return await asyncio.get_running_loop().run_in_executor(self._vocab_thread, fn, model)
        except RuntimeError as exc:  # the executor was shut down: the model is going away
            raise not_ready from exc
        except UnicodeEncodeError as exc:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST, "the text is not valid Unicode (a lone surrogate)"
            ) from exc

    def _close_vocab_thread(self) -> None:
        """Finish vocabulary work and refuse more: done before the model is freed."""
        self._vocab_thread.shutdown(wait=True, cancel_futures=True)

    async def compile_grammar(self, gbnf: str) -> Grammar:
        """Compile a GBNF grammar (root rule ``root``) off the decode loop;
        ``INVALID_REQUEST`` if llama.cpp refuses it."""
        try:
            most = self.config.n_ctx if self.config.grammar_budget else None
            return await self._on_vocab_thread(
                lambda m: compile_grammar(m, gbnf, budget_tokens=most)
            )
        except GrammarError as exc:
            raise WorkerError(ErrorCode.INVALID_REQUEST, "the output grammar is invalid") from exc

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """``text`` as token ids."""
        return await self._on_vocab_thread(
            lambda m: m.tokenize(text, add_special=add_special, parse_special=parse_special)
        )

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's bytes (special tokens spelled out); ``INVALID_REQUEST`` for an id
        outside the vocabulary."""
        n_vocab = self.info.n_vocab if self.info is not None else 0
        bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"token id {bad} is not in the vocabulary (0-{n_vocab - 1})",
            )
        return await self._on_vocab_thread(lambda m: [m.special_piece(t) for t in tokens])

    def stats(self) -> EngineStats:
        """Current load (a racy snapshot, fine for reporting)."""
        return EngineStats(
            active=len(self._seqs),
            queued=len(self._waiting) + len(self._preparing) + len(self._to_prepare),
            slots=self.config.parallel,
            max_queue=self.config.max_queue,
        )

    async def close(self) -> None:
        """Cancel everything, stop the thread and free the model."""
        await asyncio.to_thread(self._close_vocab_thread)
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(_Stop())
            await asyncio.to_thread(self._thread.join)
        self._state = EngineState.CLOSED

    def forget(self, session: str) -> None:
        """Drop the KV caches kept for ``session`` (it is gone)."""
        self._inbox.put(_Forget(session))

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
            pin_mmap_threshold()
            path = resolve_model_path(self.config.model_path)
            self._identity = ModelIdentity.of(path)
            config = self.config
            model = at_low_priority(
                lambda: LlamaModel(
                    path,
                    n_ctx_seq=config.n_ctx,
                    n_seq=config.parallel,
                    n_batch=config.n_batch,
                    n_threads=config.n_threads,
                    n_gpu_layers=config.n_gpu_layers,
                    kernels=config.kernels,
                    n_outputs=config.parallel + self._draft_outputs,
                )
            )
            template = self.config.chat_template or model.chat_template
            self._renderer = PromptRenderer(
                template,
                bos_token=model.bos_text,
                special_tokens=model.special_texts(),
                prefer_chat=model.info.instruction_tuned,
            )
            self._model = model
            self._prompt_tokens = SessionTokens(model)
            self._batch = Batch(max(self.config.n_batch, self.config.parallel))
            self._kv = KVCacheManager(model, self.config, path)
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
            self._defragment()
            self._plan_drafts()
            plan = plan_step(self._views(), self.config.n_batch, self._pacer.budget)
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
            elif isinstance(msg, _Ready):
                self._queue(msg)
            elif isinstance(msg, _Evict):
                self._evict(msg.client, msg.newcomer)
            elif isinstance(msg, _Forget):
                self._forget(msg.key)
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                msg = None
        return False

    def _accept(self, job: Job) -> None:
        """Queue ``job`` for its preparation on the vocabulary threads (rendering, tokenizing:
        costs that grow with the prompt, which the decode loop must never wait for)."""
        if job in self._refused:
            self._refused.discard(job)
            self._fail(job, at_capacity())
            return
        if job.cancelled:
            self._final(job, _cancelled_before_start(job, 0))
            return
        self._to_prepare.push(job)
        self._dispatch_preparations()

    def _dispatch_preparations(self) -> None:
        """Start preparations while a vocabulary thread is free: the oldest job of a client
        with none being prepared. One at a time per client keeps each client's requests in
        their order, and one client's flood of long prompts does not hold up another's."""
        while len(self._preparing) < _PREP_THREADS and len(self._to_prepare) > 0:
            counts = _by_client(self._preparing)
            job = self._to_prepare.peek(counts)
            assert job is not None
            if counts.get(job.spec.client, 0) > 0:
                return  # every client waiting has one being prepared
            self._to_prepare.remove(job)
            if job.cancelled:
                self._final(job, _cancelled_before_start(job, 0))
                continue
            self._preparing.add(job)
            try:
                self._vocab_thread.submit(self._prepare_off_loop, job)
            except RuntimeError:  # shut down: the engine is stopping
                self._preparing.discard(job)
                self._fail(job, WorkerError(ErrorCode.OVERLOADED, "the model is not ready"))

    def _prepare_off_loop(self, job: Job) -> None:
        """On a vocabulary thread: prepare ``job`` and tell the engine thread."""
        prepared: Prepared | None = None
        error: WorkerError | None = None
        try:
            if not job.cancelled:  # a cancelled one ends when the engine hears of it
                prepared = self._prepare(job)
        except WorkerError as exc:
            error = exc
        except UnicodeEncodeError:
            error = WorkerError(
                ErrorCode.INVALID_REQUEST, "the text is not valid Unicode (a lone surrogate)"
            )
        except Exception:
            log.exception("prompt preparation failed", extra={"request_id": job.request_id})
            error = WorkerError(ErrorCode.INFERENCE_ERROR, "tokenization failed")
        self._inbox.put(_Ready(job, prepared, error))

    def _queue(self, ready: _Ready) -> None:
        """A prepared job joins the admission queue (or ends, refused or cancelled)."""
        job = ready.job
        if job not in self._preparing:
            return  # the engine stopped and ended it meanwhile
        self._preparing.discard(job)
        self._dispatch_preparations()
        if job.cancelled:
            n_tokens = 0 if ready.prepared is None else len(ready.prepared.tokens)
            self._final(job, _cancelled_before_start(job, n_tokens))
            return
        if ready.error is not None or ready.prepared is None:
            self._fail(job, ready.error or WorkerError(ErrorCode.INFERENCE_ERROR, "failed"))
            return
        prepared = ready.prepared
        self._waiting.push(prepared)
        order = self._waiting.ordered(self._running())
        position = next(i for i, p in enumerate(order, start=1) if p is prepared)
        n_free = self._cache.n_free
        if position > n_free:
            # Requests ahead of this one that will take the free slots are not "in the queue".
            job.channel.put(Queued(position - n_free))

    def _running(self) -> Counter[str]:
        """How many requests each client has running now."""
        return _by_client(seq.job for seq in self._seqs.values())

    def _evict(self, client: str, newcomer: Job) -> None:
        """``client``'s newest waiting request (not yet prepared, else prepared) gives its
        place to ``newcomer``; with none waiting (all running or being prepared), the
        newcomer is refused instead, so the places stay bounded."""
        victim: Job | None = self._to_prepare.newest_of(client)
        if victim is not None:
            self._to_prepare.remove(victim)
        else:
            prepared = self._waiting.newest_of(client)
            if prepared is not None and self._waiting.remove(prepared):
                victim = prepared.job
        if victim is None:
            self._refused.add(newcomer)
            return
        self._fail(victim, at_capacity(largest_share=True))

    def _prepare(self, job: Job) -> Prepared:
        """Render and tokenise ``job``'s prompt (on a vocabulary thread)."""
        model, renderer, prompt_tokens = self._model, self._renderer, self._prompt_tokens
        assert model is not None and renderer is not None and prompt_tokens is not None
        return prepare(
            job,
            model,
            renderer,
            prompt_tokens,
            self.config.max_input_tokens,
            speculation=self.config.speculation,
        )

    @property
    def _cache(self) -> KVCacheManager:
        kv = self._kv
        assert kv is not None, "the model is loaded"
        return kv

    def _admit(self) -> None:
        kv = self._cache
        admitted = False
        #: Requests waiting for a running request to compute the prefix they share.
        deferred: list[Prepared] = []
        while len(self._waiting) > len(deferred) and kv.n_free > 0:
            prepared = self._next_waiting(deferred)
            spec = prepared.job.spec
            caches = kv.cached(spec.scope, prepared.prompt.parse_special)
            matches = {slot: self._match(prepared, cache.tokens) for slot, cache in caches.items()}
            scores = {s: self._useful(prepared, m, caches[s]) for s, m in matches.items()}
            # A session whose latest cache went to disk gets it back when it beats every slot.
            saved = self._saved_match(prepared)
            best_slot = max(scores.values(), default=0)
            leader = self._leader(prepared, max(saved or 0, best_slot))
            if leader is not None and leader[0].n_past < leader[1]:
                deferred.append(prepared)
                continue
            if leader is not None or (saved and saved > best_slot):
                scores = {}
            acquired = kv.acquire(scores, spec.session)
            self._waiting.remove(prepared)
            slot = acquired.slot
            tokens, n_cached = prepared.tokens, 0
            reused = acquired.reused
            if leader is not None:
                kv.copy(leader[0].slot, slot)
                if kv.keep_prefix(slot, leader[1]):
                    n_cached = leader[1]
                else:
                    kv.clear(slot)
            elif reused is not None:
                source = caches[reused]
                if reused != slot:
                    kv.copy(reused, slot)
                tokens, n_cached = self._reuse(slot, prepared, source.tokens, matches[reused])
            elif saved and (restored := kv.restore(slot, spec.session)) is not None:
                match = self._match(prepared, restored)
                tokens, n_cached = self._reuse(slot, prepared, restored, match)
            else:
                kv.clear(slot)
            self._start(prepared, slot, tokens, n_cached)
            admitted = True
        if admitted:  # everyone still waiting moved up
            for position, waiting in enumerate(self._waiting.ordered(self._running()), 1):
                waiting.job.channel.put(Queued(position))

    def _next_waiting(self, deferred: list[Prepared]) -> Prepared:
        """The waiting request that starts next, passing over the ``deferred`` ones."""
        running = self._running()
        head = self._waiting.peek(running)
        if head is not None and all(head is not d for d in deferred):
            return head
        return next(p for p in self._waiting.ordered(running) if all(p is not d for d in deferred))

    def _leader(self, prepared: Prepared, beat: int) -> tuple[SequenceState, int] | None:
        """The running request (same key scope, same kind of prompt) whose prompt shares the
        longest head with ``prepared``'s, more than ``beat`` tokens and at least
        :data:`MIN_IN_FLIGHT_PREFIX`, with how many of those tokens ``prepared`` takes from
        its KV cache (all but its last prompt token at most). Requests sent together with the
        same long head (a system prompt, a document, tool definitions) compute it once: the
        others wait while it is processed, then start from a copy. ``None`` when no running
        request shares enough, or its sliding-window layers have moved past the head."""
        spec, tokens = prepared.job.spec, prepared.tokens
        found: tuple[SequenceState, int] | None = None
        for seq in self._seqs.values():
            job = seq.job
            if job.spec.scope != spec.scope or job.parse_special != prepared.prompt.parse_special:
                continue
            n = min(common_prefix(seq.prompt_tokens, tokens), len(tokens) - 1)
            if n < max(MIN_IN_FLIGHT_PREFIX, beat + 1) or (found and n <= found[1]):
                continue
            if seq.n_past >= n and not self._cache.window_covers(seq.slot, n):
                continue
            found = (seq, n)
        return found

    def _defragment(self) -> None:
        """Close a gap between busy slots (the cache manager moves the KV); the request
        follows its cache."""
        move = self._cache.close_gap(lambda slot: self._seqs[slot].job.spec.session)
        if move is not None:
            src, dst = move
            seq = self._seqs.pop(src)
            seq.slot = dst
            self._seqs[dst] = seq

    def _start(self, prepared: Prepared, slot: int, tokens: list[int], n_cached: int) -> None:
        model = self._model
        assert model is not None
        job = prepared.job
        try:
            sampler = Sampler(
                job.params,
                model.info.n_vocab,
                grammar=job.spec.grammar,
                piece=model.piece,
                top_logprobs=job.spec.top_logprobs,
                vocab=model if self.config.grammar_budget else None,
            )
        except Exception:
            log.exception("sampler setup failed", extra={"request_id": job.request_id})
            self._cache.release(slot)
            self._fail(job, WorkerError(ErrorCode.INFERENCE_ERROR, "sampling setup failed"))
            return
        self._order += 1
        self._seqs[slot] = SequenceState(
            job,
            slot,
            self._order,
            tokens,
            model.n_ctx_seq,
            sampler=sampler,
            n_cached=n_cached,
            drafter=prepared.drafter,
        )
        job.channel.put(Started(len(tokens), n_cached))

    def _match(self, prepared: Prepared, cached: tuple[int, ...] | list[int]) -> PrefixMatch:
        """How much of ``cached`` the prepared prompt can reuse (matched on text: a session's
        next prompt is rendered from stored text, whose tokens may differ from those the model
        generated)."""
        model = self._model
        assert model is not None
        prompt = prepared.prompt
        head = model.bos_head if prompt.add_special else []
        return match_prefix(
            cached,
            head,
            prepared.text,
            model.special_piece,
            (lambda _t: True) if prompt.parse_special else (lambda t: not model.is_control(t)),
            boundaries=prepared.boundaries,
        )

    def _useful(
        self, prepared: Prepared, match: PrefixMatch, cache: CachedPrefix | None = None
    ) -> int:
        """How many cached tokens a match saves: nothing for the BOS alone; nothing when
        sliding-window layers have already dropped what the prompt would continue from; and,
        while an empty slot is free, nothing for a short match of another conversation's cache
        (a shared template head is not worth destroying that cache)."""
        model = self._model
        assert model is not None
        head = len(model.bos_head) if prepared.prompt.add_special else 0
        n = match.n_tokens
        if n <= head or cache is None:
            return n if n > head else 0
        if model.n_swa and len(cache.tokens) - n > model.n_swa:
            return 0
        own = cache.session is not None and cache.session == prepared.job.spec.session
        if not own and self._cache.n_empty > 0 and n < head + MIN_SHARED_PREFIX:
            return 0
        return n

    def _saved_match(self, prepared: Prepared) -> int:
        """How many tokens of the request's session cache saved on disk it could reuse."""
        tokens = self._cache.saved_tokens(prepared.job.spec.session)
        return 0 if tokens is None else self._useful(prepared, self._match(prepared, tokens))

    def _reuse(
        self,
        slot: int,
        prepared: Prepared,
        cached: tuple[int, ...] | list[int],
        match: PrefixMatch,
    ) -> tuple[list[int], int]:
        """The prompt tokens for ``prepared`` in a slot whose KV cache starts with the
        ``match``ed tokens, and how many of them are already there. Falls back to a cold start
        (the whole prompt, nothing cached) when nothing matches or the cache cannot continue."""
        model = self._model
        assert model is not None
        prompt = prepared.prompt
        if match.n_tokens > 0:
            split = prepared.boundaries.get(match.n_bytes)
            if split is not None:  # the prompt's own tokens after the match: no tokenizing here
                rest = prepared.tokens[split:]
            else:
                rest = model.tokenize(
                    prepared.text[match.n_bytes :].decode("utf-8"),
                    add_special=False,
                    parse_special=prompt.parse_special,
                )
            tokens = list(cached[: match.n_tokens]) + rest
            # At least one prompt token must be decoded to get the logits of the next one.
            n_cached = min(match.n_tokens, len(tokens) - 1)
            job = prepared.job
            room = model.n_ctx_seq - len(tokens)
            params = job.params
            if params.fit_context and room >= least_answer(job.spec):
                params = dataclasses.replace(
                    params, max_tokens=min(job.spec.params.max_tokens, room)
                )
            fits = params.max_tokens <= room
            if fits and n_cached > 0 and self._cache.keep_prefix(slot, n_cached):
                job.params = params
                return tokens, n_cached
        self._cache.clear(slot)
        return prepared.tokens, 0

    def _forget(self, key: str) -> None:
        for seq in self._seqs.values():  # running now: do not keep its cache when it ends
            if seq.job.spec.session == key:
                seq.keep_cache = False
        if self._prompt_tokens is not None:
            self._prompt_tokens.forget(key)
        self._cache.forget(key)

    def _reap_cancelled(self) -> None:
        for seq in [s for s in self._seqs.values() if s.job.cancelled]:
            self._finish(seq, "cancelled")
        for entry in [e for e in self._waiting if e.job.cancelled]:
            self._waiting.remove(entry)
            self._final(entry.job, _cancelled_before_start(entry.job, len(entry.tokens)))
        for job in [j for j in self._to_prepare if j.cancelled]:
            self._to_prepare.remove(job)
            self._final(job, _cancelled_before_start(job, 0))

    def _views(self) -> list[SlotView]:
        return [
            SlotView(
                slot=s.slot,
                order=s.order,
                prefill_remaining=s.prefill_remaining,
                paused=s.next_token is not None and s.job.channel.full(),
                draft=len(s.draft),
            )
            for s in self._seqs.values()
        ]

    def _plan_drafts(self) -> None:
        """Each decoding sequence's draft for the next step: what its context suggests, as
        much of it as pays (:func:`~gemma_worker.core.speculation.plan_drafts`)."""
        if not self.config.speculation:
            return
        wants: dict[int, list[int]] = {}
        rates: dict[int, float] = {}
        caps: dict[int, int] = {}
        for seq in self._seqs.values():
            seq.draft = []
            seq.n_guessed = 0
            seq.draft_match = 0
            if seq.next_token is None or seq.prefill_remaining or seq.job.channel.full():
                continue
            rates[seq.slot] = 0.0  # in the step; a rate matters only with a draft
            if seq.drafter is None:
                continue
            caps[seq.slot] = k = min(self.config.max_draft, seq.draft_room())
            match, draft = seq.drafter.lookup(k)
            if draft:
                wants[seq.slot] = draft
                seq.draft_match = match
                rates[seq.slot] = seq.acceptance[match].rate
        if not wants:
            return
        room = min(self.config.n_batch - len(rates), self._draft_outputs)
        if any(seq.prefill_remaining for seq in self._seqs.values()):
            room -= self._pacer.min_chunk  # drafts never crowd a prompt out of the batch
        if room <= 0:
            return
        granted = plan_drafts(
            {slot: len(d) for slot, d in wants.items()},
            rates,
            self._step_costs,
            room=room,
            caps=caps,
        )
        for slot, n in granted.items():
            seq = self._seqs[slot]
            assert seq.drafter is not None and seq.next_token is not None
            draft = wants.get(slot, [])[:n]
            seq.n_guessed = n - len(draft)
            seq.draft = draft + seq.drafter.guess(seq.n_guessed, [seq.next_token, *draft])
        for slot in wants:
            if slot not in granted:
                seq = self._seqs[slot]
                seq.acceptance[seq.draft_match].rest()

    def _step(self, plan: list[StepEntry]) -> None:
        if self.config.on_step is not None:
            self.config.on_step(plan)
        t0 = time.perf_counter()
        self._run_step(plan)
        seconds = time.perf_counter() - t0
        n_prefill = sum(e.n_tokens for e in plan if e.prefill)
        decoding = [e.n_tokens for e in plan if not e.prefill]
        n_decode = sum(decoding)
        self._pacer.observe(n_decode, n_prefill, seconds, len(decoding))
        if n_prefill == 0:
            self._step_costs.observe_step([(e.slot, e.n_tokens) for e in plan], seconds)

    def _run_step(self, plan: list[StepEntry]) -> None:
        model = self._model
        assert model is not None
        batch = self._batch
        batch.clear()
        #: Per sequence sampled this step: its output rows, and the tokens decoded there that
        #: are not yet its own (the next token and its draft; none for a prompt's end).
        outputs: list[tuple[SequenceState, list[int], list[int]]] = []
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
                    outputs.append((seq, [idx], []))
            else:
                assert seq.next_token is not None
                inputs = [seq.next_token, *seq.draft]
                rows = [batch.add(t, seq.n_past + i, seq.slot, True) for i, t in enumerate(inputs)]
                seq.next_token = None
                outputs.append((seq, rows, inputs))
        with self.config.gate.turn(self._gate_name):
            rc = model.decode(batch)
        if rc != 0:
            log.error("llama_decode failed", extra={"rc": rc, "n_tokens": batch.n_tokens})
            error = WorkerError(ErrorCode.INFERENCE_ERROR, "the model failed to decode")
            for entry in plan:
                seq = self._seqs[entry.slot]
                self._release(seq)
                self._fail(seq.job, error)
            return
        for seq, rows, inputs in outputs:
            self._sample(seq, rows, inputs)

    def _sample(self, seq: SequenceState, rows: list[int], inputs: list[int]) -> None:
        """Sample ``seq``'s tokens at its output ``rows``, in order, as it would without
        speculation: the token at each row follows the input decoded there; a draft token
        (``inputs[1:]``) stands while it equals the token sampled before it, and the first
        that does not ends the step for this sequence. Its KV cache then keeps only the
        tokens that stood (the rejected draft's cells are removed)."""
        model = self._model
        assert model is not None
        sampler = seq.sampler
        draft = inputs[1:]
        written = seq.n_past + len(inputs)  # KV positions this step filled
        accepted = 0
        reason: FinishReason | None = None
        for i, row in enumerate(rows):
            if inputs:
                seq.decoded.append(inputs[i])
                seq.n_past += 1
            room = min(seq.job.params.max_tokens - seq.n_generated, seq.n_ctx - seq.n_past)
            try:
                token = sampler.sample(model.ctx, row, room)
            except SamplingError as exc:
                log.info("sampling dead end", extra={"request_id": seq.job.request_id})
                self._release(seq)
                self._fail(seq.job, WorkerError(ErrorCode.INVALID_REQUEST, str(exc)))
                return
            eog = model.is_eog(token)
            logprob = None if eog else sampler.logprob(model.ctx, row, token)
            text, reason = seq.on_token(
                model.piece(token), eog, logprob, complete=sampler.ends_answer
            )
            if text is not None:
                seq.job.channel.put(text)
            stands = i < len(draft) and token == draft[i]
            accepted += stands
            if reason is not None:
                break
            if seq.drafter is not None:
                seq.drafter.extend((token,))
            if not stands:
                seq.next_token = token
                break
        if seq.n_past < written:
            # Only the newest cells go; sliding-window layers lost none that later positions
            # need (llama.cpp reuses a cell only once it is out of every later one's window).
            self._cache.keep_prefix(seq.slot, seq.n_past)
        seq.speculated(len(draft), accepted)
        if reason is not None:
            self._finish(seq, reason)

    def _release(self, seq: SequenceState, *, keep_cache: bool = False) -> None:
        """Free the slot; with ``keep_cache`` its KV cache stays for later requests to reuse."""
        seq.sampler.free()
        del self._seqs[seq.slot]
        cache = None
        if keep_cache and seq.keep_cache:
            spec = seq.job.spec
            cache = CachedPrefix(
                spec.scope, tuple(seq.kv_tokens()), spec.session, seq.job.parse_special
            )
        self._cache.release(seq.slot, cache)

    def _finish(self, seq: SequenceState, reason: FinishReason) -> None:
        self._release(seq, keep_cache=True)
        self._final(seq.job, seq.finished(reason))

    def _fail(self, job: Job, error: WorkerError) -> None:
        self._final(job, Failed(error))

    def _final(self, job: Job, event: EngineEvent) -> None:
        job.channel.put(event)
        with self._pending_lock:
            self._shares.give_back(job.spec.client)
        if isinstance(event, Finished):
            ttft = event.timings.ttft_ms
            log.info(
                "generation finished",
                extra={
                    "request_id": job.request_id,
                    "finish_reason": event.finish_reason,
                    "prompt_tokens": event.usage.prompt_tokens,
                    "cached_tokens": event.usage.cached_tokens,
                    "completion_tokens": event.usage.completion_tokens,
                    "ttft_ms": None if ttft is None else round(ttft, 1),
                    "total_ms": round(event.timings.total_ms, 1),
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
        pending += [(job, 0) for job in (*self._preparing, *self._to_prepare)]
        self._preparing.clear()
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
        if crash is None and self._kv is not None:  # keep idle sessions' caches
            self._kv.save_idle_sessions()
        self._batch.free()
        self._close_vocab_thread()  # after a crash it may still be using the model
        if self._model is not None:
            self._model.close()
        if crash is None:
            self._state = EngineState.CLOSED


def _by_client(jobs: Iterable[Job]) -> Counter[str]:
    """How many of ``jobs`` each client has."""
    return Counter(job.spec.client for job in jobs)


def _cancelled_before_start(job: Job, n_prompt_tokens: int) -> Finished:
    waited = (time.perf_counter() - job.submitted_at) * 1e3
    return Finished(
        finish_reason="cancelled",
        usage=Usage(n_prompt_tokens, 0),
        timings=Timings(queue_ms=waited, ttft_ms=None, tokens_per_second=None, total_ms=waited),
    )
