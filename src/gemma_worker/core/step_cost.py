"""What a ``llama_decode`` costs, learned from the ones seen (sans-I/O): a fixed part and a
part per token, fitted by least squares. The embedding pacer plans batches with it; the
speculation planner decides with it whether drafts pay and how many fit a step."""

from __future__ import annotations

from collections import deque

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
        self.fixed = 0.0
        self.per_token: float | None = None

    def observe(self, n_tokens: int, seconds: float) -> None:
        """A batch of ``n_tokens`` took ``seconds``."""
        if n_tokens <= 0 or seconds < 0:
            return
        self._seen.append((n_tokens, seconds))
        self._fit()

    def tokens_within(self, seconds: float) -> int | None:
        """The most tokens a batch may hold to take at most ``seconds`` (``None``: the cost is
        not known yet; 0: not even one token fits)."""
        if self.per_token is None:
            return None
        return max(0, int((seconds - self.fixed) / self.per_token))

    def _fit(self) -> None:
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
            self.fixed, self.per_token = 0.0, mean_t / mean_n
            return
        fixed = mean_t - slope * mean_n
        if fixed < 0.0:
            fixed, slope = 0.0, sum(ts) / sum(ns)
        self.fixed, self.per_token = fixed, slope
