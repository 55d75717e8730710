"""The embedding pipeline: an :class:`EmbeddingRequest` from any dialect becomes vectors.

Here, once for every API: admission, the input limits, the model (named, or the default
embedding model), tokenizing and the length rule (refuse naming the input, or truncate),
the rate limits (an input token counts as a generated one does), the submission, the drain's
bookkeeping, the metrics and ``dimensions``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.ids import new_id
from gemma_worker.engine.embed_job import EmbeddingResult, EmbeddingSpec
from gemma_worker.engine.embedding_engine import EmbeddingEngine
from gemma_worker.engine.llama_embed import normalize_rows
from gemma_worker.runtime.request import Caller
from gemma_worker.runtime.state import WorkerState

log = logging.getLogger(__name__)

#: One input: text, or token ids of the model's vocabulary (used as they are).
EmbeddingInput = str | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """One embedding request as any dialect asks for it. ``field`` is the request field of
    the inputs (errors name ``field[i]``); ``truncate``: cut inputs over the model's limit
    (keeping the end token) instead of refusing them; ``dimensions``: keep the first this
    many components of each vector and re-normalise."""

    inputs: tuple[EmbeddingInput, ...]
    caller: Caller
    transport: str
    model: str | None = None
    field: str = "input"
    truncate: bool = False
    dimensions: int | None = None
    #: How long the model stays loaded after this request (seconds; ``None``: its default).
    keep_alive: float | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The answer: one L2-normalised row per input, each input's token count, the model's
    id, and how long the request waited for the model to load and took in all (seconds)."""

    vectors: npt.NDArray[np.float32]
    token_counts: tuple[int, ...]
    model: str
    load_seconds: float
    total_seconds: float

    @property
    def n_tokens(self) -> int:
        """Tokens of every input together."""
        return sum(self.token_counts)


#: The dialect's answer: sends the vectors to the client.
Deliver = Callable[[Embeddings], Awaitable[None]]


async def embed(state: WorkerState, req: EmbeddingRequest, deliver: Deliver) -> None:
    """Check, tokenize, submit and await ``req``, then hand its vectors to ``deliver`` (the
    dialect's answer). What the request held (the model, its rate-limit place, the drain's
    count) is given back and its tokens charged before the answer is sent, so a client that
    reads slowly holds nothing; the metrics and the log line come after it, off the request's
    critical path. Before ``deliver``: :class:`WorkerError` (``INVALID_REQUEST``,
    ``CONTEXT_OVERFLOW``, ``RATE_LIMITED``, ``OVERLOADED``, a model's errors) with nothing
    left claimed."""
    t0 = time.perf_counter()
    state.lifecycle.admit()
    _check_inputs(state, req)
    spec = state.models.registry.resolve_embedding(req.model)
    req.caller.check_may_use(spec)
    use = await state.models.use_spec(spec, embed=True)
    try:
        embedder = use.embedder
        if req.dimensions is not None and not 1 <= req.dimensions <= embedder.n_embd:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"dimensions: {req.dimensions} is not possible with model '{spec.id}', whose "
                f"vectors have {embedder.n_embd} (ask for 1-{embedder.n_embd})",
                param="dimensions",
            )
        tokens = await _tokenize(embedder, req)
        admission = await state.limiter.admit(req.caller.identity)
        try:
            handle = embedder.embed(
                EmbeddingSpec(
                    request_id=req.request_id or new_id(),
                    inputs=tuple(tuple(t) for t in tokens),
                    client=req.caller.identity,
                )
            )
            state.lifecycle.request_started(handle)
            try:
                result = await handle.result()
            finally:
                state.lifecycle.request_ended(handle)
            admission.charge(result.n_tokens)
            await admission.end()
        finally:
            admission.release()
    finally:
        use.release(req.keep_alive)
    counts = tuple(len(t) for t in tokens)
    total = time.perf_counter() - t0
    answer = Embeddings(
        _fit(result.vectors, req.dimensions), counts, spec.id, use.load_seconds, total
    )
    try:
        await deliver(answer)
    finally:
        _account(state, req, spec.id, result, total)


def _account(
    state: WorkerState, req: EmbeddingRequest, model: str, result: EmbeddingResult, total: float
) -> None:
    """The metrics and the log line of a request that got its vectors."""
    n_inputs = len(req.inputs)
    state.metrics.embedded(req.transport, model, n_inputs, result.n_tokens, total)
    log.info(
        "embedded",
        extra={
            "transport": req.transport,
            "model": model,
            "inputs": n_inputs,
            "tokens": result.n_tokens,
            "queue_ms": round(result.queue_ms, 1),
            "total_ms": round(total * 1e3, 1),
        },
    )


def _fit(vectors: npt.NDArray[np.float32], dimensions: int | None) -> npt.NDArray[np.float32]:
    """``vectors`` cut to their first ``dimensions`` components and re-normalised."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions].copy()
    normalize_rows(cut)
    return cut


def _check_inputs(state: WorkerState, req: EmbeddingRequest) -> None:
    """The count, emptiness and size limits, before the model is touched."""
    most = state.settings.embedding_max_inputs
    if not req.inputs:
        raise WorkerError(
            ErrorCode.INVALID_REQUEST, f"{req.field}: must not be empty", param=req.field
        )
    if len(req.inputs) > most:
        raise WorkerError(
            ErrorCode.INVALID_REQUEST,
            f"{req.field}: {len(req.inputs)} inputs; at most {most} may be sent at once",
            param=req.field,
        )
    for i, item in enumerate(req.inputs):
        where = f"{req.field}[{i}]"
        if len(item) == 0:
            what = "an empty string" if isinstance(item, str) else "an empty token list"
            raise WorkerError(ErrorCode.INVALID_REQUEST, f"{where}: {what}", param=where)
        if isinstance(item, str) and not item.isascii() and not _is_unicode(item):
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"{where}: not valid Unicode (a lone surrogate)",
                param=where,
            )
    if req.model is not None and not req.model.isascii() and not _is_unicode(req.model):
        raise WorkerError(
            ErrorCode.INVALID_REQUEST, "model: not valid Unicode (a lone surrogate)", param="model"
        )
    n_chars = sum(len(item) for item in req.inputs if isinstance(item, str))
    state.limits.check_chars(n_chars)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _tokenize(embedder: EmbeddingEngine, req: EmbeddingRequest) -> list[list[int]]:
    """Every input as tokens within the model's limit (truncated, or refused naming it)."""
    texts = [item for item in req.inputs if isinstance(item, str)]
    tokenized = iter(await embedder.tokenize_inputs(texts) if texts else [])
    limit, end = embedder.n_ctx, embedder.end_tokens
    out: list[list[int]] = []
    for i, item in enumerate(req.inputs):
        where = f"{req.field}[{i}]"
        if isinstance(item, str):
            tokens = next(tokenized)
        else:
            tokens = list(item)
            embedder.check_tokens(tokens, where)
        if len(tokens) > limit:
            if not req.truncate:
                raise WorkerError(
                    ErrorCode.CONTEXT_OVERFLOW,
                    f"{where}: {len(tokens)} tokens; the model takes at most {limit} per input",
                    param=where,
                )
            keep = end if isinstance(item, str) and tokens[-len(end) :] == end else []
            tokens = tokens[: limit - len(keep)] + keep
        out.append(tokens)
    return out
