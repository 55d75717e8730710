"""The seam between the API and the engine."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gemma_worker.core.conversation import Conversation
from gemma_worker.core.request import SamplingParams
from gemma_worker.engine.job import GenerationHandle
from gemma_worker.engine.llama import ModelInfo
from gemma_worker.engine.prompt import PromptRenderer


class EngineState(StrEnum):
    """Lifecycle of an engine."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of the engine's load."""

    active: int
    queued: int
    slots: int
    max_queue: int


class Engine(Protocol):
    """Runs generations. ``submit`` never blocks; results stream back through the handle."""

    @property
    def state(self) -> EngineState:
        """Current lifecycle state."""
        ...

    @property
    def info(self) -> ModelInfo | None:
        """The loaded model's description (``None`` until loaded)."""
        ...

    @property
    def renderer(self) -> PromptRenderer:
        """Prompt formatting for the loaded model (only valid once ready)."""
        ...

    @property
    def n_ctx(self) -> int:
        """Tokens of context each request may use (prompt + generation)."""
        ...

    async def start(self) -> None:
        """Load the model (on the engine thread); raise if that fails."""
        ...

    def submit(
        self,
        conversation: Conversation,
        params: SamplingParams,
        request_id: str,
        cache_key: str | None = None,
    ) -> GenerationHandle:
        """Queue a generation; raise ``WorkerError(OVERLOADED)`` at once when full.

        The engine renders the prompt, leaving out the oldest turns that do not fit. With a
        ``cache_key`` it may keep the KV cache afterwards and reuse it for the next generation
        with the same key.
        """
        ...

    def forget(self, cache_key: str) -> None:
        """Drop any KV cache kept for ``cache_key``."""
        ...

    def stats(self) -> EngineStats:
        """Current load."""
        ...

    async def close(self) -> None:
        """Cancel everything, stop the thread and free the model."""
        ...
