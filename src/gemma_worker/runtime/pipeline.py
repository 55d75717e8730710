"""The one request pipeline: a :class:`~gemma_worker.runtime.request.GenerationRequest` from
any dialect becomes a running :class:`~gemma_worker.runtime.generation.Generation`.

Here, once for every API: admission, the input limits, sampling defaults and limits, the
output grammar (and its token budget), the tool instructions, the session turn, the
rate-limit admission and the submission. The engine renders every conversation (one renderer,
one trimming rule) when it prepares the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gemma_worker.core.conversation import Conversation
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.ids import new_id
from gemma_worker.core.json_schema import SchemaError, tool_call_gbnf
from gemma_worker.core.response_format import grammar_for
from gemma_worker.core.sampling import RequestLimits, SamplingParams
from gemma_worker.core.tool_prompt import with_tool_instructions
from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.interface import Engine
from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.prompt import Prompt
from gemma_worker.runtime.generation import Generation
from gemma_worker.runtime.models import ModelUse
from gemma_worker.runtime.registry import ModelSpec
from gemma_worker.runtime.request import GenerationRequest, Input, Output, RawPrompt
from gemma_worker.runtime.state import WorkerState
from gemma_worker.sessions.service import TurnPlan, TurnRequest

log = logging.getLogger(__name__)


async def start_generation(state: WorkerState, req: GenerationRequest) -> Generation:
    """Check, plan and submit ``req``.

    Raises :class:`~gemma_worker.core.errors.WorkerError` (``OVERLOADED``, ``RATE_LIMITED``,
    ``INVALID_REQUEST``, a session's errors...) before anything is queued, with nothing left
    claimed. The caller must :meth:`Generation.release` the result when done with its events.
    """
    state.lifecycle.admit()
    source = req.input
    name = req.model
    if not name and isinstance(source, TurnRequest) and source.session_id and not source.stateless:
        name = await state.sessions.model_of(source.session_id, req.caller.owner)
    spec = _generative_spec(state, req, name)
    use = await state.models.use_spec(spec, req.on_loading)
    try:
        return await _start(state, req, use)
    except BaseException:
        use.release()
        raise


def _generative_spec(state: WorkerState, req: GenerationRequest, name: str | None) -> ModelSpec:
    """The model ``name`` resolves to, if the caller's key may use it and it generates."""
    spec = state.models.registry.resolve(name)
    req.caller.check_may_use(spec)
    if spec.embeds_only:
        raise WorkerError(
            ErrorCode.INVALID_REQUEST,
            f"model '{spec.id}' is an embedding model: it does not generate text",
            param="model",
        )
    return spec


async def _start(state: WorkerState, req: GenerationRequest, use: ModelUse) -> Generation:
    engine, limits = use.engine, use.limits
    source = req.input
    if isinstance(source, Conversation):
        source = _with_tools(source, req.output)
    _check_size(limits, source, req)
    info = engine.info
    params = limits.resolve(
        req.sampling, n_ctx=engine.n_ctx, n_vocab=info.n_vocab if info is not None else 0
    )
    grammar = await _grammar(engine, req.output, params, req.sampling.length.param)
    turn: TurnPlan | None = None
    if isinstance(source, TurnRequest):
        fmt = engine.renderer.resolve(source.prompt_format)
        turn = await state.sessions.begin(source, fmt, req.caller.owner, model=use.spec.id)
        prompt: Conversation | Prompt = turn.conversation
    elif isinstance(source, RawPrompt):
        prompt = Prompt(
            source.text, add_special=True, parse_special=source.parse_special, format="plain"
        )
    else:
        prompt = source
    spec = GenerationSpec(
        request_id=req.request_id or new_id(),
        prompt=prompt,
        params=params,
        scope=req.caller.owner,
        session=turn.session_id if turn is not None and turn.stored else None,
        grammar=grammar,
        top_logprobs=req.top_logprobs,
        trim_history=req.trim_history,
        client=req.caller.identity,
    )
    try:
        admission = await state.limiter.admit(req.caller.identity)
        try:
            handle = engine.submit(spec)
        except BaseException:
            admission.release()
            raise
    except BaseException:
        if turn is not None:
            turn.release()
        raise
    log.info(
        "request accepted",
        extra={
            "request_id": spec.request_id,
            "transport": req.transport,
            "model": use.spec.id,
            "session_id": spec.session,
            "max_tokens": params.max_tokens,
            "grammar": grammar is not None,
        },
    )
    # The drain waits for it from now on, until it is released.
    state.lifecycle.request_started(handle)
    tools = req.output is not None and req.output.tools is not None
    return Generation(
        state,
        handle,
        spec.request_id,
        admission,
        req.transport,
        use,
        tools=tools,
        turn=turn,
        keep_alive=req.keep_alive,
    )


async def count_input_tokens(state: WorkerState, req: GenerationRequest) -> tuple[str, int]:
    """The model's id and how many tokens the prompt of ``req`` (a conversation, with its
    tool instructions) takes, as a generation of it would count them in ``prompt_tokens``;
    nothing is generated. The same checks as :func:`start_generation` before the model."""
    state.lifecycle.admit()
    source = req.input
    if not isinstance(source, Conversation):
        raise TypeError("only a conversation's tokens are counted")
    spec = _generative_spec(state, req, req.model)
    use = await state.models.use_spec(spec)
    try:
        conv = _with_tools(source, req.output)
        _check_size(use.limits, conv, req)
        engine = use.engine
        prompt = engine.renderer.render(conv)
        tokens = await engine.tokenize(
            prompt.text, add_special=prompt.add_special, parse_special=prompt.parse_special
        )
    finally:
        use.release()
    return spec.id, len(tokens)


def _check_size(limits: RequestLimits, source: Input, req: GenerationRequest) -> None:
    """The character and message limits, before any costly step. A history that will be
    trimmed to fit does not count (a long session is not refused for its age)."""
    if isinstance(source, TurnRequest):
        n_chars = len(source.input) + len(source.system or "")
    elif isinstance(source, RawPrompt):
        n_chars = len(source.text)
    elif req.trim_history:
        n_chars = len(source.input) + len(source.system or "")
    else:
        n_chars = source.n_chars
    limits.check_chars(n_chars, req.n_messages)


def _with_tools(conv: Conversation, output: Output | None) -> Conversation:
    if output is None or output.tools is None:
        return conv
    use = output.tools
    return with_tool_instructions(conv, use.tools, parallel=use.parallel, forced=use.forced)


async def _grammar(
    engine: Engine, output: Output | None, params: SamplingParams, budget_param: str
) -> Grammar | None:
    if output is None:
        return None
    use, fmt = output.tools, output.format
    if use is not None:
        return await compile_output_grammar(
            engine,
            lambda: tool_call_gbnf(list(use.tools), required=use.required, parallel=use.parallel),
            output.field,
            params,
            budget_param,
        )
    return await compile_output_grammar(
        engine, lambda: grammar_for(fmt), output.field, params, budget_param
    )


async def compile_output_grammar(
    engine: Engine,
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
    grammar = await engine.compile_grammar(gbnf)
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
