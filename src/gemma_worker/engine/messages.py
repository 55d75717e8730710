"""What the engine reports about one generation, in order: ``Trimmed``? ``Queued``*
``Started`` ``Text``* then ``Finished`` or ``Failed``. (A request rejected before it starts
gets ``Failed`` only.) These typed events are the one generation core every API dialect encodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_worker.core.errors import WorkerError
from gemma_worker.core.usage import FinishReason, Timings, Usage


@dataclass(frozen=True, slots=True)
class Trimmed:
    """The history did not fit the context: the ``dropped_turns`` oldest turns were left out of
    the prompt (``kept_turns`` remain)."""

    dropped_turns: int
    kept_turns: int


@dataclass(frozen=True, slots=True)
class Queued:
    """All slots are busy; the request waits at ``position`` (1 = next)."""

    position: int


@dataclass(frozen=True, slots=True)
class Started:
    """The request has a slot; of its ``n_prompt_tokens`` prompt tokens, ``n_cached_tokens``
    are reused from a KV cache and the rest are being processed."""

    n_prompt_tokens: int
    n_cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One candidate token and its log-probability under the model."""

    token: str
    logprob: float
    bytes: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token, its log-probability under the model (softmax of the raw logits, before
    any sampling transform) and the ``top`` most likely alternatives at its position."""

    token: str
    logprob: float
    bytes: bytes
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Text:
    """Generated text, as soon as it is complete UTF-8 and cannot be part of a stop string;
    ``logprobs`` holds the tokens it came from when the request asked for them."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Finished:
    """Generation ended normally or was cancelled."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    #: The stop string that ended it (``None``: the end of turn, a length, a cancel).
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """Generation could not run or broke; ``error`` is safe to show."""

    error: WorkerError


EngineEvent = Trimmed | Queued | Started | Text | Finished | Failed
