"""The seam between the API and the engine."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.job import GenerationHandle, GenerationSpec
from gemma_worker.engine.llama import ModelInfo
from gemma_worker.engine.model_files import ModelIdentity
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
    def identity(self) -> ModelIdentity | None:
        """Which model this is (``None`` until it is loaded)."""
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

    def submit(self, spec: GenerationSpec) -> GenerationHandle:
        """Queue a generation; raise ``WorkerError(OVERLOADED)`` at once when full.

        The engine renders a conversation's prompt, leaving out the oldest turns that do not
        fit, and reuses any cached prefix of the spec's scope (automatic prefix caching).
        """
        ...

    def forget(self, session: str) -> None:
        """Drop every KV cache kept for ``session`` (memory and disk)."""
        ...

    async def compile_grammar(self, gbnf: str) -> Grammar:
        """A grammar for one request, compiled off the decode loop; ``INVALID_REQUEST`` if
        it does not compile."""
        ...

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """``text`` as token ids."""
        ...

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's bytes; ``INVALID_REQUEST`` for an id outside the vocabulary."""
        ...

    def stats(self) -> EngineStats:
        """Current load."""
        ...

    async def close(self) -> None:
        """Cancel everything, stop the thread and free the model."""
        ...
