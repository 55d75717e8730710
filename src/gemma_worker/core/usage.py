"""What a finished generation cost and how long it took: defined once, encoded by each API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Why a generation ended: a stop (end of turn, stop string, grammar complete), its length, or a
#: cancel (client gone, drain).
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one generation; ``cached_tokens`` of the prompt were reused from a KV
    cache (a session's or a shared prefix) instead of being processed again."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timings:
    """Latency figures of one generation, in milliseconds (tokens/s for the rate)."""

    queue_ms: float
    ttft_ms: float | None
    tokens_per_second: float | None
    total_ms: float
    #: Speculation: tokens drafted from the context and verified, and how many of them stood
    #: (each one a token that cost no step of its own).
    draft_tokens: int = 0
    accepted_tokens: int = 0
