"""One embedding request as the engine and the event loop both see it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gemma_worker.core.embed_batching import PendingInputs
from gemma_worker.core.errors import WorkerError


@dataclass(frozen=True, slots=True, eq=False)
class EmbeddingSpec:
    """What to embed: each input's tokens (within the model's input limit), and whom it
    counts for (an API key id, else the client's address) when the engine is shared out."""

    request_id: str
    inputs: tuple[tuple[int, ...], ...]
    client: str = "anonymous"


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """One L2-normalised vector per input (rows, in input order) and how long the request
    waited before its first batch and took in all (milliseconds)."""

    vectors: npt.NDArray[np.float32]
    n_tokens: int
    queue_ms: float
    total_ms: float


@dataclass(eq=False)
class EmbedJob:
    """Shared between threads: the loop sets ``cancelled``; the engine fills ``vectors``
    batch by batch and settles ``future`` (through the loop) when all are done or it fails."""

    spec: EmbeddingSpec
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EmbeddingResult]
    n_embd: int
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    cancelled: bool = False
    pending: PendingInputs = field(init=False)
    vectors: npt.NDArray[np.float32] = field(init=False)
    n_done: int = 0

    def __post_init__(self) -> None:
        self.pending = PendingInputs([len(t) for t in self.spec.inputs])
        self.vectors = np.zeros((len(self.spec.inputs), self.n_embd), dtype=np.float32)

    def finish(self) -> None:
        """Engine thread: every vector is in; hand the result to the loop."""
        now = time.perf_counter()
        start = self.started_at or now
        result = EmbeddingResult(
            self.vectors,
            sum(self.pending.lengths),
            (start - self.submitted_at) * 1e3,
            (now - self.submitted_at) * 1e3,
        )
        self._settle(lambda f: f.set_result(result))

    def fail(self, error: WorkerError) -> None:
        """Engine thread: end the request with ``error``."""
        self._settle(lambda f: f.set_exception(error))

    def _settle(self, how: Callable[[asyncio.Future[EmbeddingResult]], None]) -> None:
        def settle() -> None:
            if not self.future.done():
                how(self.future)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(settle)


class EmbeddingHandle:
    """The client side of a submitted embedding request: await it, or cancel it."""

    def __init__(self, job: EmbedJob, wake: Callable[[], None]) -> None:
        self._job = job
        self._wake = wake

    @property
    def request_id(self) -> str:
        """The request's id."""
        return self._job.spec.request_id

    @property
    def done(self) -> bool:
        """Whether the request has ended."""
        return self._job.future.done()

    def cancel(self) -> None:
        """Stop the request between batches; awaiting it then raises ``CancelledError``."""
        if not self._job.cancelled and not self.done:
            self._job.cancelled = True
            self._wake()

    async def result(self) -> EmbeddingResult:
        """The vectors; a :class:`WorkerError` if the engine failed. Cancelling the caller
        cancels the request."""
        try:
            return await asyncio.shield(self._job.future)
        except asyncio.CancelledError:
            self.cancel()
            raise
