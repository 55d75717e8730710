"""What a ``llama_decode`` costs, learned from the ones seen (sans-I/O).

- :class:`CostModel`: a fixed part and a part per token, fitted by least squares; the
  embedding pacer plans batches with it.
- :func:`step_passes`: the passes through the model llama.cpp runs a batch in. With a KV
  buffer per slot it splits a batch into micro-batches of *equal* shares of consecutive
  sequences, so a batch whose sequences bring different numbers of tokens (one drafts, the
  others do not) runs the whole model several times: measured here, 8 streams with one
  token each and one of them 8 more cost 126 ms, 8 streams with 2 tokens each 93 ms.
- :class:`StepCosts`: a generation step's cost by its width (tokens, each with its logits).
  Not a line: CPU matrix kernels run one row at a time under 4 rows (gemv) and in blocks of 4
  rows above, ever more efficient per row, a partial block costing a whole one. Measured
  here (fast kernels, 270M model): 1 row 12 ms, 2 rows 24, 4 rows 34, 5 rows 49, 8 rows 47,
  9 rows 65, 16 rows 81, 17 rows 101, 32 rows 136, 64 rows 233. So: narrow widths one by
  one, wide ones as a power law of the width rounded up to the block, fitted in log-log
  space. A step of several passes costs the sum of its passes. The speculation planner
  chooses draft lengths with it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

#: Decodes the cost model is fitted over.
_WINDOW = 32
#: The largest decode seen must be this many times the smallest to fit a fixed cost apart.
_SPREAD = 1.5


class CostModel:
    """A batch's cost as ``fixed + per_token * n_tokens`` seconds, fitted by least squares over
    the last ``window`` batches. A decode has a fixed cost (a few ms: the graph, the pooling,
    the thread pool's wake-up) that a per-token average learned from large batches leaves out,
    so the short batches planned beside a stream would overrun."""

    def __init__(self, window: int = _WINDOW) -> None:
        self._seen: deque[tuple[int, float]] = deque(maxlen=window)
        self._fitted: tuple[float, float | None] = (0.0, None)
        self._stale = False

    def observe(self, n_tokens: int, seconds: float) -> None:
        """A batch of ``n_tokens`` took ``seconds``. Cheap: the fit waits until a figure is
        asked for (an engine thread observes right after each decode, on the request's
        critical path; it plans by the figures only beside another engine's stream)."""
        if n_tokens <= 0 or seconds < 0:
            return
        self._seen.append((n_tokens, seconds))
        self._stale = True

    @property
    def fixed(self) -> float:
        """The fixed part of a batch's cost, in seconds."""
        return self._fit()[0]

    @property
    def per_token(self) -> float | None:
        """The cost of a token, in seconds (``None``: the cost is not known yet)."""
        return self._fit()[1]

    def seconds(self, n_tokens: int) -> float | None:
        """A batch of ``n_tokens``, in seconds (``None``: the cost is not known yet)."""
        fixed, per_token = self._fit()
        if per_token is None:
            return None
        return fixed + per_token * n_tokens

    def tokens_within(self, seconds: float) -> int | None:
        """The most tokens a batch may hold to take at most ``seconds`` (``None``: the cost is
        not known yet; 0: not even one token fits)."""
        fixed, per_token = self._fit()
        if per_token is None or per_token <= 0.0:  # every batch seen took no time: unknown
            return None
        return max(0, int((seconds - fixed) / per_token + 1e-9))

    def _fit(self) -> tuple[float, float | None]:
        """(fixed, per token), fitted anew if a decode was observed since the last fit."""
        if self._stale:
            self._stale = False
            self._fitted = self._least_squares()
        return self._fitted

    def _least_squares(self) -> tuple[float, float]:
        ns = [float(n) for n, _ in self._seen]
        ts = [t for _, t in self._seen]
        mean_n, mean_t = sum(ns) / len(ns), sum(ts) / len(ts)
        slope = 0.0
        if max(ns) >= _SPREAD * min(ns):
            var = sum((n - mean_n) ** 2 for n in ns)
            slope = sum((n - mean_n) * (t - mean_t) for n, t in zip(ns, ts, strict=True)) / var
        if slope <= 0.0:
            # Sizes too alike to tell the two costs apart, or noise: proportional, which is
            # right near the sizes seen (and those are the sizes being planned).
            return 0.0, mean_t / mean_n
        fixed = mean_t - slope * mean_n
        if fixed < 0.0:
            fixed, slope = 0.0, sum(ts) / sum(ns)
        return fixed, slope


def step_passes(
    counts: Sequence[tuple[int, int]], *, equal_split: bool = True, n_ubatch: int = 512
) -> list[int]:
    """The widths of the passes llama.cpp runs a batch in. ``counts``: (sequence id, tokens)
    per sequence in batch order, each sequence's tokens together. ``equal_split`` (a KV
    buffer per slot): each pass takes the same number of tokens from a run of sequences of
    consecutive ids, as many as the shortest of them has left (llama.cpp's sequential
    ``split_equal``); else passes of ``n_ubatch`` tokens in order (``split_simple``)."""
    if not equal_split:
        total = sum(n for _, n in counts)
        return [min(n_ubatch, total - i) for i in range(0, total, n_ubatch)]
    left = [[seq, n] for seq, n in counts if n > 0]
    widths: list[int] = []
    while left:
        run = [left[0]]
        for entry in left[1:]:
            if entry[0] == run[-1][0] + 1:
                run.append(entry)
        shortest = min(e[1] for e in run)
        take = max(1, min(shortest, n_ubatch // len(run)))
        for entry in run:
            entry[1] -= take
        widths.append(take * len(run))
        left = [e for e in left if e[1] > 0]
    return widths


#: Rows a CPU matrix kernel works on at once (repacked and tiled K-quant gemm); narrower
#: steps run row by row.
ROW_BLOCK = 4
#: Steps the power law is fitted over.
_STEP_WINDOW = 64
#: The exponent assumed until steps of different widths have been seen, and how many steps
#: two widths apart that assumption weighs (so a few noisy steps do not swing it).
_PRIOR_EXPONENT, _PRIOR_WEIGHT = 0.75, 2.0
#: Weight of the newest step in a narrow width's average.
_NARROW_ALPHA = 0.2


class StepCosts:
    """Seconds of a pass of ``width`` tokens (a step is the sum of its passes,
    :meth:`estimate_step`): under ``block`` rows, each width's average of the passes
    seen; from ``block`` rows, ``a * padded ** b`` with the width padded up to a whole
    block, fitted by least squares on the logarithms of the last wide steps, ``b``
    pulled towards a prior while the widths seen are too alike to tell it."""

    def __init__(
        self,
        block: int = ROW_BLOCK,
        window: int = _STEP_WINDOW,
        *,
        equal_split: bool = True,
        n_ubatch: int = 512,
    ) -> None:
        """``equal_split``, ``n_ubatch``: how llama.cpp splits a step (:func:`step_passes`)."""
        self.block = block
        self.equal_split = equal_split
        self.n_ubatch = n_ubatch
        self._narrow: dict[int, float] = {}
        self._wide: deque[tuple[float, float]] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None  # (log a, b)

    def padded(self, width: int) -> int:
        """``width`` rounded up to a whole block."""
        return -(-width // self.block) * self.block

    def observe(self, width: int, seconds: float) -> None:
        """A step of ``width`` tokens took ``seconds``."""
        if width <= 0 or seconds <= 0:
            return
        if width < self.block:
            old = self._narrow.get(width)
            self._narrow[width] = seconds if old is None else old + _NARROW_ALPHA * (seconds - old)
            return
        self._wide.append((math.log(self.padded(width)), math.log(seconds)))
        self._fit = None

    def passes(self, counts: Sequence[tuple[int, int]]) -> list[int]:
        """The widths of the passes a step of (sequence id, tokens) ``counts`` runs in."""
        return step_passes(counts, equal_split=self.equal_split, n_ubatch=self.n_ubatch)

    def observe_step(self, counts: Sequence[tuple[int, int]], seconds: float) -> None:
        """A step of (sequence id, tokens) ``counts`` took ``seconds``. A step of several
        passes is shared among them in proportion to their estimated costs (none is learned
        from it while a pass's cost cannot be estimated)."""
        widths = self.passes(counts)
        if len(widths) == 1:
            self.observe(widths[0], seconds)
            return
        estimates = [self.estimate(w) for w in widths]
        known = [e for e in estimates if e is not None]
        if len(known) < len(widths):
            return
        total = sum(known)
        for width, estimate in zip(widths, known, strict=True):
            self.observe(width, seconds * estimate / total)

    def estimate_step(self, counts: Sequence[tuple[int, int]]) -> float | None:
        """A step of (sequence id, tokens) ``counts``, in seconds: the sum of its passes
        (``None``: no step seen yet)."""
        total = 0.0
        for width in self.passes(counts):
            cost = self.estimate(width)
            if cost is None:
                return None
            total += cost
        return total

    @property
    def exponent(self) -> float | None:
        """The fitted ``b`` of wide steps (``None``: none seen yet)."""
        fit = self._fitted()
        return None if fit is None else fit[1]

    def estimate(self, width: int) -> float | None:
        """A step of ``width`` tokens, in seconds (``None``: no step seen yet)."""
        if width <= 0:
            return None
        fit = self._fitted()
        if width < self.block:
            if width in self._narrow:
                return self._narrow[width]
            if self._narrow:  # in proportion to the nearest narrow width seen
                near = min(self._narrow, key=lambda w: abs(w - width))
                return self._narrow[near] * width / near
            if fit is None:
                return None
            return math.exp(fit[0] + fit[1] * math.log(self.block)) * width / self.block
        if fit is not None:
            return math.exp(fit[0] + fit[1] * math.log(self.padded(width)))
        if not self._narrow:
            return None
        near = max(self._narrow)  # from the widest narrow step, with the prior exponent
        return self._narrow[near] * math.pow(self.padded(width) / near, _PRIOR_EXPONENT)

    def _fitted(self) -> tuple[float, float] | None:
        if self._fit is None and self._wide:
            xs = [x for x, _ in self._wide]
            ys = [y for _, y in self._wide]
            n = len(xs)
            mx, my = sum(xs) / n, sum(ys) / n
            sxx = sum((x - mx) ** 2 for x in xs) / n
            sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / n
            # ridge towards the prior, as if _PRIOR_WEIGHT steps had been seen a doubling apart
            unit = _PRIOR_WEIGHT * math.log(2.0) ** 2 / n
            b = min(max((sxy + unit * _PRIOR_EXPONENT) / (sxx + unit), 0.0), 1.2)
            self._fit = (my - b * mx, b)
        return self._fit
