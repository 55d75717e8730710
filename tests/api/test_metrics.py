"""``GET /metrics`` exposes the worker's metrics, and they move when requests run."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker

pytestmark = pytest.mark.usefixtures("wait_idle")

P = "gemma_worker_"
EXPECTED = {
    "http_requests",  # counters are listed without their _total suffix
    "http_request_duration_seconds",
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "queue_wait_seconds",
    "prompt_tokens",
    "prompt_tokens_cached",
    "generation_tokens",
    "generations",
    "queue_depth",
    "slots_busy",
    "slots_total",
    "websocket_connections",
    "sessions_active",
    "errors",
    "rate_limited",
    "cancellations",
    "speculative_draft_tokens",
    "speculative_accepted_tokens",
}


def scrape(worker: RunningWorker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{worker.http}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def post(worker: RunningWorker, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{worker.http}/v1/execute", json=body, timeout=60)


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (others may differ:
    a counter split by model sums over the models)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == P + name and want <= set(ls))


def test_metric_names_are_exposed(worker: RunningWorker) -> None:
    r = httpx.get(f"{worker.http}/metrics", timeout=10)
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {P + n for n in EXPECTED} <= names


async def test_metrics_move_when_requests_run(worker: RunningWorker) -> None:
    before = scrape(worker)
    body = {"input": PARIS_PROMPT, "max_tokens": 4, "temperature": 0}
    assert post(worker, body).status_code == 200
    assert post(worker, {"input": ""}).status_code == 422
    async with connect(worker.ws) as ws:
        assert (await run_request(ws, body))[-1]["type"] == "result"
        await send(ws, {**body, "max_tokens": 200, "request_id": "c1"})
        assert (await recv_event(ws))["type"] == "session"
        await send(ws, {"type": "cancel", "request_id": "c1"})
        while (event := await recv_event(ws))["type"] != "result":
            pass
        assert event["finish_reason"] == "cancelled"
        during = scrape(worker)
        assert value(during, "websocket_connections") >= 1
    after = scrape(worker)

    def grew(name: str, by: float = 1, **labels: str) -> None:
        assert value(after, name, **labels) - value(before, name, **labels) >= by, name

    grew("http_requests_total", route="/v1/execute", method="POST", status="200")
    grew("http_requests_total", route="/v1/execute", method="POST", status="422")
    grew("http_request_duration_seconds_count", route="/v1/execute")
    grew("generations_total", transport="rest", finish_reason="length")
    grew("generations_total", transport="websocket", finish_reason="length")
    grew("cancellations_total")
    grew("errors_total", code="INVALID_REQUEST")
    grew("prompt_tokens_total", by=26)
    grew("generation_tokens_total", by=8)
    grew("time_to_first_token_seconds_count", by=2)
    grew("inter_token_latency_seconds_count", by=2)
    grew("queue_wait_seconds_count", by=3)
    assert value(after, "slots_total") == worker.settings.parallel
    assert value(after, "sessions_active") >= 2
    assert value(after, "queue_depth") == 0


def test_speculation_is_counted_in_the_answer_and_the_metrics(worker: RunningWorker) -> None:
    # a base model asked to repeat a list repeats it: drafts from the prompt stand
    items = "\n".join(f"- host web-{i:02d} port {8000 + i} state up" for i in range(12))
    prompt = f"Inventory:\n{items}\n\nThe same inventory again:\n- host web-00"
    before = scrape(worker)
    r = post(worker, {"input": prompt, "max_tokens": 96, "temperature": 0})
    assert r.status_code == 200
    timings = r.json()["timings"]
    assert timings["accepted_tokens"] >= 30, timings
    assert timings["draft_tokens"] >= timings["accepted_tokens"]
    after = scrape(worker)
    for name, key in (
        ("speculative_draft_tokens_total", "draft_tokens"),
        ("speculative_accepted_tokens_total", "accepted_tokens"),
    ):
        assert value(after, name) - value(before, name) == timings[key], name
