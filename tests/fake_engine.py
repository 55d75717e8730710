"""A scripted engine that implements the :class:`~gemma_worker.engine.interface.Engine`
interface without llama.cpp (as simonw/llm's ``MockModel``), for the protocol, dialect, limits
and error tests: they then run in milliseconds, and the real model runs the real paths.

It keeps the engine's contract: ``submit`` raises ``OVERLOADED`` when slots and queue are
full, waiting requests hear ``Queued``, conversations are rendered by the real
:class:`PromptRenderer` (the oldest turns trimmed when the spec allows, else
``CONTEXT_OVERFLOW``), stop strings are applied by the real :class:`StopMatcher`, a
constrained answer is the grammar's shortest valid text, cancels end with ``cancelled``
within one token, a consumer that does not read pauses its own generation. A prompt token is
4 bytes of the rendered prompt; the vocabulary is the 256 byte values.
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gemma_worker.core.conversation import Conversation, turns_to_drop
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.gbnf import GbnfError
from gemma_worker.core.gbnf_walk import GrammarWalk
from gemma_worker.core.stops import StopMatcher
from gemma_worker.core.usage import FinishReason, Timings, Usage
from gemma_worker.engine.channel import EventChannel
from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.interface import EngineState, EngineStats
from gemma_worker.engine.job import GenerationHandle, GenerationSpec, Job
from gemma_worker.engine.llama import ModelInfo
from gemma_worker.engine.messages import (
    EngineEvent,
    Failed,
    Finished,
    Queued,
    Started,
    Text,
    Trimmed,
)
from gemma_worker.engine.model_files import ModelIdentity
from gemma_worker.engine.prompt import Prompt, PromptRenderer

#: What the fake answers an unconstrained request, one piece per token.
DEFAULT_ANSWER = (" Paris", ".", " It", " is", " the", " capital", " of", " France", ".")

#: ``script(spec, prompt_text)``: the pieces (one per token) of the answer.
Script = Callable[[GenerationSpec, str], Sequence[str]]


class FakeGrammar(Grammar):
    """A grammar with its Python walk and no llama.cpp sampler."""

    def __init__(self, walk: GrammarWalk, min_tokens: int) -> None:  # no super(): no sampler
        self.walk = walk
        self.min_tokens = min_tokens


def default_script(spec: GenerationSpec, prompt: str) -> Sequence[str]:
    """The grammar's shortest answer (in pieces of 3 characters), else
    :data:`DEFAULT_ANSWER`."""
    grammar = spec.grammar
    if grammar is not None and grammar.walk is not None:
        walk = grammar.walk
        text = walk.shortest(walk.initial()) or ""
        return [text[i : i + 3] for i in range(0, len(text), 3)]
    return DEFAULT_ANSWER


def repeating(piece: str, n: int = 4000) -> Script:
    """A script answering ``piece`` ``n`` times (a long answer to cancel or to stall)."""

    def script(spec: GenerationSpec, prompt: str) -> Sequence[str]:
        return [piece] * n

    return script


class FakeEngine:
    """Runs scripted generations on the event loop. ``token_delay`` is the time each token
    takes (cancels and the drain have something to interrupt); ``load_delay`` the time
    :meth:`start` takes, ``load_gate`` an event it waits for; ``fail_load`` makes it fail
    with that message."""

    def __init__(
        self,
        *,
        script: Script = default_script,
        slots: int = 4,
        max_queue: int = 8,
        n_ctx: int = 1024,
        token_delay: float = 0.0,
        load_delay: float = 0.0,
        fail_load: str | None = None,
        load_gate: threading.Event | None = None,
        stream_buffer: int = 64,
        chat_template: str | None = None,
    ) -> None:
        self.script = script
        self.slots = slots
        self.max_queue = max_queue
        self.token_delay = token_delay
        self.load_delay = load_delay
        self.fail_load = fail_load
        self.load_gate = load_gate
        self.stream_buffer = stream_buffer
        self._n_ctx = n_ctx
        self._state = EngineState.LOADING
        self._renderer = PromptRenderer(chat_template, special_tokens=("<start_of_turn>",))
        folder = Path(tempfile.mkdtemp(prefix="fake-engine-"))
        path = folder / "fake-model.gguf"
        path.write_bytes(b"GGUF fake")
        self._identity = ModelIdentity.of(path)
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Every spec submitted, oldest first (what tests inspect).
        self.submitted: list[GenerationSpec] = []
        #: Sessions :meth:`forget` was called for.
        self.forgotten: list[str] = []

    # --- Engine interface ------------------------------------------------------------------
    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def info(self) -> ModelInfo | None:
        if self._state is not EngineState.READY:
            return None
        return ModelInfo(
            name="fake-model",
            architecture="fake",
            n_params=1000,
            size_bytes=9,
            n_ctx_train=self._n_ctx,
            n_vocab=256,
            has_chat_template=self._renderer.has_chat_template,
            instruction_tuned=False,
        )

    @property
    def identity(self) -> ModelIdentity | None:
        return self._identity if self._state is EngineState.READY else None

    @property
    def renderer(self) -> PromptRenderer:
        return self._renderer

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.sleep(self.load_delay)
        if self.load_gate is not None:
            await asyncio.to_thread(self.load_gate.wait, 60)
        if self.fail_load is not None:
            self._state = EngineState.FAILED
            raise RuntimeError(self.fail_load)
        self._state = EngineState.READY

    def submit(self, spec: GenerationSpec) -> GenerationHandle:
        if self._state is not EngineState.READY or self._loop is None:
            raise WorkerError(ErrorCode.OVERLOADED, "the model is not ready", retry_after=1)
        if len(self._running) + len(self._waiting) >= self.slots + self.max_queue:
            raise WorkerError(ErrorCode.OVERLOADED, "the worker is at capacity", retry_after=1)
        self.submitted.append(spec)
        job = Job(spec, EventChannel(self._loop, self.stream_buffer))
        self._waiting.append(job)
        handle = GenerationHandle(job, self._wake)
        self._pump()
        return handle

    def forget(self, session: str) -> None:
        self.forgotten.append(session)

    async def compile_grammar(self, gbnf: str) -> Grammar:
        try:
            walk = GrammarWalk.parse(gbnf)
        except GbnfError as exc:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST, f"the grammar does not compile: {exc}"
            ) from exc
        shortest = walk.shortest(walk.initial()) or ""
        return FakeGrammar(walk, max(1, -(-len(shortest.encode()) // 3)))

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return list(text.encode())

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        for token in tokens:
            if not 0 <= token < 256:
                raise WorkerError(
                    ErrorCode.INVALID_REQUEST, f"token id {token} is not in the vocabulary"
                )
        return [bytes([t]) for t in tokens]

    def stats(self) -> EngineStats:
        return EngineStats(
            active=len(self._running),
            queued=len(self._waiting),
            slots=self.slots,
            max_queue=self.max_queue,
        )

    async def close(self) -> None:
        for job in [*self._waiting, *self._running]:
            job.cancelled = True
        self._pump()
        for task in list(self._tasks):
            await task
        self._state = EngineState.CLOSED

    # --- scheduling -------------------------------------------------------------------------
    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._pump)

    def _pump(self) -> None:
        """End cancelled waiting jobs; start waiting ones while a slot is free."""
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
            self._end(job, _finished("cancelled", 0, 0, job))
        while self._waiting and len(self._running) < self.slots:
            job = self._waiting.popleft()
            self._running.add(job)
            task = asyncio.get_running_loop().create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for position, job in enumerate(self._waiting, start=1):
            job.channel.put(Queued(position))

    def _end(self, job: Job, event: EngineEvent) -> None:
        job.channel.put(event)

    async def _run(self, job: Job) -> None:
        try:
            await self._generate(job)
        except WorkerError as exc:
            self._end(job, Failed(exc))
        finally:
            self._running.discard(job)
            self._pump()

    async def _generate(self, job: Job) -> None:
        spec, params = job.spec, job.params
        prompt, n_prompt = self._prepare(job)
        if params.fit_context:
            params_max = min(params.max_tokens, self._n_ctx - n_prompt)
        else:
            params_max = params.max_tokens
        job.channel.put(Started(n_prompt))
        started = time.perf_counter()
        stops = StopMatcher(params.stop)
        pieces = list(self.script(spec, prompt.text))
        n_out = 0
        reason: FinishReason = "stop"
        first: float | None = None
        for piece in pieces:
            if job.cancelled:
                reason = "cancelled"
                break
            if n_out >= params_max:
                reason = "length"
                break
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            else:
                await asyncio.sleep(0)
            await _while_full(job)
            n_out += 1
            text = stops.feed(piece)
            if text:
                first = first or time.perf_counter()
                job.channel.put(Text(text))
            if stops.stopped:
                break
        else:
            rest = stops.flush()
            if rest:
                job.channel.put(Text(rest))
        if job.cancelled and reason != "cancelled" and n_out < len(pieces):
            reason = "cancelled"
        self._end(job, _finished(reason, n_prompt, n_out, job, started=started, first=first))

    def _prepare(self, job: Job) -> tuple[Prompt, int]:
        source = job.spec.prompt
        params = job.params
        answer = 1 if params.fit_context else params.max_tokens
        budget = self._n_ctx - answer

        def build(drop: int) -> Prompt:
            if isinstance(source, Conversation):
                return self._renderer.render(source.without_oldest(drop))
            return source

        trims = isinstance(source, Conversation) and job.spec.trim_history
        n_history = len(source.history) if isinstance(source, Conversation) and trims else 0
        drop = turns_to_drop(n_history, lambda d: _tokens(build(d)) <= budget)
        if drop is None:
            raise WorkerError(
                ErrorCode.CONTEXT_OVERFLOW,
                f"prompt ({_tokens(build(n_history))} tokens) + max_tokens ({answer}) exceeds "
                f"the context of {self._n_ctx} tokens",
            )
        if drop:
            job.channel.put(Trimmed(dropped_turns=drop, kept_turns=n_history - drop))
        prompt = build(drop)
        return prompt, _tokens(prompt)


async def _while_full(job: Job) -> None:
    """Wait while ``job``'s consumer is behind (polled, as the real engine does)."""
    while job.channel.full() and not job.cancelled:  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.005)


def _tokens(prompt: Prompt) -> int:
    return 1 + len(prompt.text.encode()) // 4


def _finished(
    reason: FinishReason,
    n_prompt: int,
    n_out: int,
    job: Job,
    *,
    started: float | None = None,
    first: float | None = None,
) -> Finished:
    now = time.perf_counter()
    begun = started if started is not None else now
    total = (now - job.submitted_at) * 1000
    return Finished(
        reason,
        Usage(n_prompt, n_out),
        Timings(
            queue_ms=(begun - job.submitted_at) * 1000,
            ttft_ms=None if first is None else (first - job.submitted_at) * 1000,
            tokens_per_second=n_out / (now - begun) if n_out and now > begun else None,
            total_ms=total,
        ),
    )
