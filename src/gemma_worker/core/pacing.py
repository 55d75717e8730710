"""How many prompt tokens a step may carry beside decoding streams (sans-I/O).

A step that processes prompt tokens delays every stream decoding in it. Alone, a prompt gets
the whole batch; beside streams, it gets as many tokens as keep that step within
``gap_factor`` times a decode-only step of every request holding a slot (the decoding ones
and those whose prompts are still being processed, each bringing as many tokens as decoding
streams have lately brought a step, drafts included): once those prompts are done, a step
costs that anyway, so processing them costs no stream more than their company will, while
a burst of prompts is not left to trickle in a few tokens a step behind the first of them to
start. Costs are judged from the steps seen so far, a fixed part and a part per token each
(:class:`~gemma_worker.core.step_cost.CostModel`): with a KV buffer per slot, the prompt
tokens of a mixed step mostly run as a pass of their own through the model (llama.cpp splits
such a batch into equal shares of consecutive sequences), whose fixed cost a per-token
average would leave out. Paused streams, not in the step, do not count. The pacer
only learns from what the engine reports (:meth:`PrefillPacer.observe`); it never reads a
clock itself.
"""

from __future__ import annotations

from gemma_worker.core.step_cost import CostModel

#: Weight of the newest decode-only step in the tokens-per-stream average.
_WIDTH_ALPHA = 0.1


class PrefillPacer:
    """Learns step costs; answers how many prompt tokens fit beside decoding streams."""

    def __init__(self, *, gap_factor: float, max_chunk: int, min_chunk: int = 8) -> None:
        """``gap_factor``: the longest a step with prompt tokens may take, in decode-only
        steps of every request holding a slot. ``max_chunk``: never more prompt tokens than
        this beside streams (the budget until costs are known). ``min_chunk``: never fewer,
        so a prompt always progresses."""
        self.gap_factor = gap_factor
        self.max_chunk = max_chunk
        self.min_chunk = min(min_chunk, max_chunk)
        #: Seconds of a decode-only step, by its tokens (one per stream, drafts included).
        self._decode = CostModel()
        #: Seconds of a step's prompt tokens, on top of the step's decoding.
        self._prompt = CostModel()
        #: Tokens a decoding stream brings to a decode-only step, lately (1 without drafts;
        #: with speculation, its next token and its draft).
        self.stream_width = 1.0

    def observe(
        self, n_decode: int, n_prefill: int, seconds: float, n_streams: int | None = None
    ) -> None:
        """A step ran: ``n_decode`` tokens were decoded (streams' next tokens and drafts) for
        ``n_streams`` streams (default: one token each), ``n_prefill`` prompt tokens were
        processed, in ``seconds``."""
        if n_prefill == 0:
            if n_decode > 0:
                self._decode.observe(n_decode, seconds)
                width = n_decode / (n_streams or n_decode)
                self.stream_width += _WIDTH_ALPHA * (width - self.stream_width)
            return
        base = 0.0
        if n_decode > 0:
            known = self._decode.seconds(n_decode)
            if known is None:
                return
            base = known
        self._prompt.observe(n_prefill, max(seconds - base, 0.0))

    def budget(self, n_decode: int, n_streams: int) -> int:
        """Prompt tokens the next step may carry beside ``n_decode`` (> 0) decoding tokens,
        with ``n_streams`` requests holding slots (decoding or processing their prompts)."""
        decode = self._decode.seconds(n_decode)
        company = self._decode.seconds(max(round(n_streams * self.stream_width), n_decode))
        if decode is None or company is None:
            return self.max_chunk
        fits = self._prompt.tokens_within(self.gap_factor * company - decode)
        if fits is None:
            return self.max_chunk
        return max(self.min_chunk, min(self.max_chunk, fits))
