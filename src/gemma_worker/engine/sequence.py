"""Per-request generation state inside a slot: prompt progress, detokenisation, stop rules.

Plain Python: it is handed token ids and their bytes and decides what text to emit and when the
generation ends, so it is testable without a model.
"""

from __future__ import annotations

import codecs
import time
from collections import defaultdict

from gemma_worker.core.speculation import Acceptance, NgramDrafter
from gemma_worker.core.stops import StopMatcher
from gemma_worker.core.usage import FinishReason, Timings, Usage
from gemma_worker.engine.job import Job
from gemma_worker.engine.messages import Finished, Text, TokenLogprob
from gemma_worker.engine.sampler import Sampler


class SequenceState:
    """One running request in slot ``slot`` (which is also its llama.cpp sequence id)."""

    def __init__(
        self,
        job: Job,
        slot: int,
        order: int,
        prompt_tokens: list[int],
        n_ctx: int,
        *,
        sampler: Sampler,
        n_cached: int = 0,
        drafter: NgramDrafter | None = None,
    ) -> None:
        self.job = job
        #: Its sampler (owned: freed with the sequence).
        self.sampler = sampler
        self.slot = slot
        self.order = order
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        #: Prompt tokens already in the KV cache when the sequence started (reused).
        self.n_cached = n_cached
        self.n_past = n_cached
        self.next_token: int | None = None
        #: Generated tokens that have been decoded into the KV cache, in order.
        self.decoded: list[int] = []
        #: Whether the KV cache may be kept for the session's next turn (not once deleted).
        self.keep_cache = True
        self.n_generated = 0
        self.started_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(job.params.stop)
        self._logprobs: list[TokenLogprob] = []
        #: Drafts continuations from the prompt and the tokens sampled so far (``None``: this
        #: sequence does not speculate).
        self.drafter = drafter
        #: How likely a draft token is to stand, for the drafts found by each n-gram length
        #: (measured on the bench's prompts: a 12-token match's draft kept 14 of 16 tokens on
        #: average, a 2-token match's 2).
        self.acceptance: defaultdict[int, Acceptance] = defaultdict(Acceptance)
        #: The draft verified in the coming step beside :attr:`next_token`, and the length of
        #: the n-gram that found it (0: none, or guesses only).
        self.draft: list[int] = []
        self.draft_match = 0
        #: How many of the draft's last tokens are guesses that only fill the step's shape
        #: (their verification says nothing of the drafter).
        self.n_guessed = 0
        self.n_drafted = 0
        self.n_accepted = 0

    def draft_room(self) -> int:
        """The most draft tokens worth verifying: the answer's tokens left after the next
        one, and the context's positions left."""
        left = self.job.params.max_tokens - self.n_generated - 1
        return max(0, min(left, self.n_ctx - self.n_past - 2))

    def speculated(self, drafted: int, accepted: int) -> None:
        """A step verified ``drafted`` draft tokens and kept ``accepted`` of them; the drafter's
        (all but the last :attr:`n_guessed`) count in the timings and the acceptance."""
        drafter = drafted - self.n_guessed
        if drafter > 0:
            self.n_drafted += drafter
            self.n_accepted += min(accepted, drafter)
            self.acceptance[self.draft_match].observe(drafter, min(accepted, drafter))

    @property
    def prefill_remaining(self) -> int:
        """Prompt tokens not yet in the KV cache."""
        return max(len(self.prompt_tokens) - self.n_past, 0)

    def prefill_chunk(self, n: int) -> list[int]:
        """The next ``n`` prompt tokens, starting at position :attr:`n_past`."""
        return self.prompt_tokens[self.n_past : self.n_past + n]

    def kv_tokens(self) -> list[int]:
        """The tokens in this sequence's KV cache (positions 0 .. n_past-1)."""
        return self.prompt_tokens[: self.n_past] + self.decoded

    def on_token(
        self,
        piece: bytes,
        eog: bool,
        logprob: TokenLogprob | None = None,
        *,
        complete: bool = False,
    ) -> tuple[Text | None, FinishReason | None]:
        """Account for a sampled token: return (text to emit now, finish reason or ``None``).
        ``complete``: the token completes a constrained answer that ends here (``stop``).
        Log-probabilities of tokens whose text is held back (a possible stop string, an
        incomplete character) go out with the next text."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        if eog:
            return self._emit(self._flush()), "stop"
        self.n_generated += 1
        self.last_token_at = now
        if logprob is not None:
            self._logprobs.append(logprob)
        text = self._stops.feed(self._decoder.decode(piece))
        if self._stops.stopped:
            return self._emit(text), "stop"
        if complete:
            return self._emit(text + self._flush()), "stop"
        at_limit = self.n_generated >= self.job.params.max_tokens
        if at_limit or self.n_past + 1 >= self.n_ctx:
            return self._emit(text + self._flush()), "length"
        return self._emit(text), None

    def _emit(self, text: str) -> Text | None:
        if not text:
            return None
        logprobs, self._logprobs = tuple(self._logprobs), []
        return Text(text, logprobs)

    def _flush(self) -> str:
        return self._stops.feed(self._decoder.decode(b"", final=True)) + self._stops.flush()

    def finished(self, reason: FinishReason) -> Finished:
        """The final report for this request."""
        end = time.perf_counter()
        submitted = self.job.submitted_at
        ttft = None if self.first_token_at is None else (self.first_token_at - submitted) * 1e3
        tps = None
        if self.first_token_at is not None and self.last_token_at is not None:
            span = self.last_token_at - self.first_token_at
            if self.n_generated > 1 and span > 0:
                tps = (self.n_generated - 1) / span
        return Finished(
            finish_reason=reason,
            stop_sequence=self._stops.matched if reason == "stop" else None,
            usage=Usage(len(self.prompt_tokens), self.n_generated, self.n_cached),
            timings=Timings(
                queue_ms=(self.started_at - submitted) * 1e3,
                ttft_ms=ttft,
                tokens_per_second=tps,
                total_ms=(end - submitted) * 1e3,
                draft_tokens=self.n_drafted,
                accepted_tokens=self.n_accepted,
            ),
        )
