"""A conversation as the engine renders it, and how much of its history fits (sans-I/O)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

#: How a conversation becomes a prompt: a running plain-text transcript, or chat turns.
ConversationFormat = Literal["plain", "chat"]
#: What a client may ask for: a format, or ``auto`` (the model's chat template when it has one
#: and is instruction-tuned, else plain).
PromptFormat = Literal["auto", "plain", "chat"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange: the user's input and the model's answer.

    ``prompt_tokens`` is the size of the prompt the answer was generated from (the history
    included), ``completion_tokens`` the answer's length.
    """

    user: str
    assistant: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Conversation:
    """Everything a prompt is built from: an optional system prompt, earlier turns (oldest
    first) and the new input. A one-shot request is a conversation without history."""

    input: str
    format: ConversationFormat
    history: tuple[Turn, ...] = ()
    system: str | None = None

    @property
    def n_chars(self) -> int:
        """Characters of all its text: input, history and system (what the limits count)."""
        history = sum(len(t.user) + len(t.assistant) for t in self.history)
        return len(self.input) + history + len(self.system or "")

    def without_oldest(self, n: int) -> Conversation:
        """The same conversation with its ``n`` oldest turns left out (the system prompt stays)."""
        return Conversation(self.input, self.format, self.history[n:], self.system)


def turns_to_drop(n_history: int, fits: Callable[[int], bool]) -> int | None:
    """The fewest oldest turns to drop so that ``fits(dropped)`` holds, or ``None`` when even
    dropping all ``n_history`` is not enough.

    ``fits`` must be monotone (dropping more never makes it false); it is called
    O(log n_history) times, since each call renders and tokenises a prompt.
    """
    if fits(0):
        return 0
    if not fits(n_history):
        return None
    lo, hi = 0, n_history  # fits(lo) is false, fits(hi) is true
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
