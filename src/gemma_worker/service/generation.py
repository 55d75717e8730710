"""One generation, whatever API it came through.

:func:`start_generation` admits a :class:`GenerationSpec` (readiness, rate limits) and submits
it; :meth:`Generation.events` yields typed events: the engine's, with the text of a request that
offered tools split into content and tool-call deltas. Each dialect (house protocol, OpenAI)
encodes these events; none re-parses another's output.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field

from gemma_worker.api.ratelimit import Lease
from gemma_worker.api.state import WorkerState
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.json_schema import SchemaError
from gemma_worker.core.request import SamplingParams
from gemma_worker.core.tool_stream import (
    ContentDelta,
    ToolCallArguments,
    ToolCallStart,
    ToolCallStream,
    ToolDelta,
)
from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.job import GenerationHandle, GenerationSpec
from gemma_worker.engine.messages import (
    Failed,
    Finished,
    Queued,
    Started,
    Text,
    TokenLogprob,
    Trimmed,
)

log = logging.getLogger(__name__)

#: Everything a dialect encodes, in order: ``Trimmed``? ``Queued``* ``Started``, then ``Text``,
#: ``ToolCallStart`` and ``ToolCallArguments`` deltas, then ``Finished`` or ``Failed``.
GenerationEvent = (
    Trimmed | Queued | Started | Text | ToolCallStart | ToolCallArguments | Finished | Failed
)


@dataclass(eq=False)
class Generation:
    """A submitted generation: its events, its rate-limit lease, and what to release when it
    is over (``cleanups``, e.g. a session's claim). The drain waits for it until it is
    released."""

    state: WorkerState
    handle: GenerationHandle
    request_id: str
    lease: Lease
    transport: str
    tools: bool = False
    cleanups: list[Callable[[], object]] = field(default_factory=list)
    _released: bool = False

    async def events(self) -> AsyncGenerator[GenerationEvent, None]:
        """Every event up to ``Finished``/``Failed``. A finished generation's tokens are
        charged to the client's limits and counted in the metrics, and its place under the
        client's concurrency cap given back, before it is yielded."""
        parser = ToolCallStream(enabled=self.tools)
        while not self.handle.done:
            event = await self.handle.next_event()
            if isinstance(event, Text) and self.tools:
                for delta in _deltas(parser.feed(event.text), event.logprobs):
                    yield delta
                continue
            if isinstance(event, Finished):
                self._account(event)
                for delta in _deltas(parser.finish(), ()):
                    yield delta
            if isinstance(event, Finished | Failed):
                # Free the client's place under its concurrency cap before it hears the end,
                # so its next request is not refused on any replica.
                await self.lease.end()
            yield event

    def close(self) -> None:
        """The caller is done with the events. A generation still running (its client left)
        is cancelled; its tokens are still charged and its cleanups run once the engine has
        stopped it."""
        if self.handle.done:
            self.release()
        else:
            self.handle.cancel()
            self.state.spawn(self._settle())

    def release(self) -> None:
        """Run the cleanups and end the lease (idempotent)."""
        if self._released:
            return
        self._released = True
        for cleanup in self.cleanups:
            cleanup()
        self.lease.release()
        self.state.request_ended(self.handle)

    async def _settle(self) -> None:
        try:
            async with asyncio.timeout(60):
                while not self.handle.done:
                    event = await self.handle.next_event()
                    if isinstance(event, Finished):
                        self._account(event)
        except Exception:
            log.exception("could not settle a cancelled generation")
        finally:
            self.release()

    def _account(self, event: Finished) -> None:
        self.lease.charge(event.usage.completion_tokens)
        self.state.metrics.finished(self.transport, event.finish_reason, event.usage, event.timings)


def _deltas(
    deltas: Iterable[ToolDelta], logprobs: tuple[TokenLogprob, ...]
) -> Iterable[Text | ToolCallStart | ToolCallArguments]:
    for delta in deltas:
        if isinstance(delta, ContentDelta):
            yield Text(delta.text, logprobs)
            logprobs = ()
        else:
            yield delta


async def compile_output_grammar(
    state: WorkerState,
    make_gbnf: Callable[[], str | None],
    field_name: str,
    params: SamplingParams,
    budget_param: str = "max_tokens",
) -> Grammar | None:
    """The grammar that ``make_gbnf`` describes (``None``: unconstrained), built off the event
    loop and the decode loop. A schema that cannot be enforced is ``INVALID_REQUEST`` naming
    ``field_name`` and the schema keyword; so is a token budget (``params.max_tokens``, which
    the client sets as ``budget_param``) below what the shortest valid answer takes."""
    try:
        gbnf = await asyncio.to_thread(make_gbnf)
    except SchemaError as exc:
        raise WorkerError(
            ErrorCode.INVALID_REQUEST, f"{field_name}: {exc}", param=field_name
        ) from exc
    if gbnf is None:
        return None
    grammar = await state.engine.compile_grammar(gbnf)
    if grammar.min_tokens > params.max_tokens:
        given = (
            f"not set, and its default of {params.max_tokens}"
            if params.fit_context
            else str(params.max_tokens)
        )
        raise WorkerError(
            ErrorCode.INVALID_REQUEST,
            f"{budget_param}: {given} is too small for the {field_name}: its shortest valid "
            f"answer takes {grammar.min_tokens} tokens",
            param=budget_param,
            max_tokens=params.max_tokens,
            min_tokens=grammar.min_tokens,
        )
    return grammar


async def start_generation(
    state: WorkerState,
    spec: GenerationSpec,
    *,
    identity: str,
    transport: str,
    tools: bool = False,
    cleanups: Iterable[Callable[[], object]] = (),
) -> Generation:
    """Admit and submit ``spec``; ``identity`` is who it counts against for rate limits and
    for the worker's fair share between clients.

    Raises :class:`~gemma_worker.core.errors.WorkerError` (``OVERLOADED``, ``RATE_LIMITED``)
    before anything is queued; ``cleanups`` then run at once. The caller must
    :meth:`Generation.close` the result when done with its events.
    """
    cleanups = list(cleanups)
    try:
        state.admit()
        lease = await state.limiter.admit(identity)
        try:
            handle = state.engine.submit(dataclasses.replace(spec, client=identity))
        except BaseException:
            lease.release()
            raise
    except BaseException:
        for cleanup in cleanups:
            cleanup()
        raise
    log.info(
        "request accepted",
        extra={
            "request_id": spec.request_id,
            "transport": transport,
            "session_id": spec.session,
            "max_tokens": spec.params.max_tokens,
            "grammar": spec.grammar is not None,
        },
    )
    # The drain waits for it from now on, until it is released.
    state.request_started(handle)
    return Generation(state, handle, spec.request_id, lease, transport, tools, cleanups)
