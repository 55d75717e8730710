"""Prometheus metrics, one registry per app (no process globals), names in the style of vLLM
and llama.cpp's server (``gemma_worker_`` prefix, seconds, ``_total`` counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gemma_worker.core.usage import Timings, Usage

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Distinct ``model`` label values at most (the rest are ``other``).
MAX_MODEL_LABELS = 32
_TOKEN_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)


class Metrics:
    """Every metric the worker exports. Gauges of current load are set at scrape time."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "gemma_worker_"
        self.http_requests = Counter(
            p + "http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            p + "http_request_duration_seconds",
            "HTTP request duration (to the end of the response, streams included).",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generations = Counter(
            p + "generations_total",
            "Generations that ended, by transport, model and finish reason.",
            ["transport", "model", "finish_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Time from submission to the first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            p + "inter_token_latency_seconds",
            "Mean time between generated tokens, one observation per generation.",
            buckets=_TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds",
            "Time a generation waited for a slot.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            p + "prompt_tokens_total",
            "Prompt tokens of finished generations, by model.",
            ["model"],
            registry=r,
        )
        self.cached_prompt_tokens = Counter(
            p + "prompt_tokens_cached_total",
            "Prompt tokens reused from a KV cache (prefix caching, sessions).",
            registry=r,
        )
        self.generation_tokens = Counter(
            p + "generation_tokens_total", "Generated tokens, by model.", ["model"], registry=r
        )
        self.draft_tokens = Counter(
            p + "speculative_draft_tokens_total",
            "Tokens drafted from the context and verified (speculative decoding), by model.",
            ["model"],
            registry=r,
        )
        self.accepted_tokens = Counter(
            p + "speculative_accepted_tokens_total",
            "Draft tokens that stood, each a generated token without a step of its own, by model.",
            ["model"],
            registry=r,
        )
        self.embedding_requests = Counter(
            p + "embedding_requests_total",
            "Embedding requests that ended with vectors, by transport and model.",
            ["transport", "model"],
            registry=r,
        )
        self.embedding_inputs = Counter(
            p + "embedding_inputs_total", "Inputs embedded, by model.", ["model"], registry=r
        )
        self.embedding_tokens = Counter(
            p + "embedding_tokens_total",
            "Tokens of embedded inputs, by model.",
            ["model"],
            registry=r,
        )
        self.embedding_duration = Histogram(
            p + "embedding_duration_seconds",
            "Time from submission to the last vector of an embedding request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.models_loaded = Gauge(p + "models_loaded", "Models loaded now.", registry=r)
        self.model_loads = Counter(
            p + "model_loads_total",
            "Model loads, by model and outcome (ok, failed).",
            ["model", "outcome"],
            registry=r,
        )
        self._models: set[str] = set()
        self.errors = Counter(
            p + "errors_total", "Errors sent to clients, by code.", ["code"], registry=r
        )
        self.rate_limited = Counter(
            p + "rate_limited_total", "Requests refused by a rate limit.", registry=r
        )
        self.stalled_streams = Counter(
            p + "stalled_streams_total",
            "Streams cancelled because their client stopped reading (stall timeout).",
            ["transport"],
            registry=r,
        )
        self.cancellations = Counter(
            p + "cancellations_total",
            "Generations cancelled (by the client, a disconnect or the drain).",
            registry=r,
        )
        self.queue_depth = Gauge(p + "queue_depth", "Generations waiting for a slot.", registry=r)
        self.slots_busy = Gauge(p + "slots_busy", "Slots running a generation.", registry=r)
        self.slots_total = Gauge(p + "slots_total", "Slots (parallel sequences).", registry=r)
        self.ws_connections = Gauge(
            p + "websocket_connections", "Open WebSocket connections.", registry=r
        )
        self.sessions_active = Gauge(p + "sessions_active", "Sessions in the store.", registry=r)

    def error(self, code: str) -> None:
        """Count one error sent to a client."""
        self.errors.labels(code=code).inc()
        if code == "RATE_LIMITED":
            self.rate_limited.inc()

    def model_load(self, model: str, ok: bool) -> None:
        """Count one model load and its outcome."""
        self.model_loads.labels(self.model_label(model), "ok" if ok else "failed").inc()

    def model_label(self, model: str) -> str:
        """``model`` as a label value: the first ``MAX_MODEL_LABELS`` names seen keep theirs,
        later ones count as ``other`` (a folder of many files cannot blow up the series)."""
        if model in self._models:
            return model
        if len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return "other"

    def finished(
        self, transport: str, model: str, finish_reason: str, usage: Usage, timings: Timings
    ) -> None:
        """Account for one generation that ended with a result."""
        label = self.model_label(model)
        self.generations.labels(transport=transport, model=label, finish_reason=finish_reason).inc()
        if finish_reason == "cancelled":
            self.cancellations.inc()
        self.prompt_tokens.labels(model=label).inc(usage.prompt_tokens)
        self.cached_prompt_tokens.inc(usage.cached_tokens)
        self.generation_tokens.labels(model=label).inc(usage.completion_tokens)
        self.draft_tokens.labels(model=label).inc(timings.draft_tokens)
        self.accepted_tokens.labels(model=label).inc(timings.accepted_tokens)
        self.queue_wait.observe(timings.queue_ms / 1e3)
        if timings.ttft_ms is not None:
            self.ttft.observe(timings.ttft_ms / 1e3)
        if timings.tokens_per_second:
            self.itl.observe(1.0 / timings.tokens_per_second)

    def embedded(
        self, transport: str, model: str, n_inputs: int, n_tokens: int, seconds: float
    ) -> None:
        """Account for one embedding request that ended with its vectors."""
        label = self.model_label(model)
        self.embedding_requests.labels(transport=transport, model=label).inc()
        self.embedding_inputs.labels(model=label).inc(n_inputs)
        self.embedding_tokens.labels(model=label).inc(n_tokens)
        self.embedding_duration.observe(seconds)

    def exposition(self) -> bytes:
        """The text format for ``GET /metrics``."""
        return generate_latest(self.registry)
