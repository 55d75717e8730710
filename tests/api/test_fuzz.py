"""Property-based fuzzing of every REST route in the OpenAPI schema (Schemathesis strategies
driven by Hypothesis) against a worker on the fake engine (the routes, the pipeline and the
encoders are the real ones; every route also has tests on the real model): valid and invalid
requests alike, it never answers 5xx, and its errors are JSON bodies with a code and nothing
internal."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from gemma_worker.api.anthropic.errors import is_anthropic_path
from gemma_worker.api.ollama.errors import is_ollama_path
from gemma_worker.api.openai.errors import is_openai_path
from tests.conftest import RunningWorker, make_settings, start_fake_worker

EXAMPLES_PER_MODE = 60
CALLS: list[tuple[str, str, int]] = []


@pytest.fixture(scope="module")
def fuzz_worker() -> Iterator[RunningWorker]:
    # Larger max_tokens are refused (422) by the cap.
    w = start_fake_worker(
        make_settings(max_tokens=4, default_max_tokens=4), slots=2, n_ctx=512, max_queue=64
    )
    yield w
    w.stop()


def check(worker: RunningWorker, case: schemathesis.Case) -> None:
    response = case.call(base_url=worker.http, timeout=60)
    CALLS.append((case.method, case.path, response.status_code))
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, (where, response.text)
    if response.status_code >= 400:
        body = response.json()
        if is_anthropic_path(case.path):
            assert body["type"] == "error" and body["error"]["message"], where
            assert body["error"]["type"], where
        elif is_openai_path(case.path):
            assert body["error"]["message"] and body["error"]["type"], where
        elif is_ollama_path(case.path):
            assert isinstance(body["error"], str) and body["error"], where
        else:
            assert body["status"] == "error" and body["code"], where
        assert "Traceback" not in response.text and "/work/" not in response.text, where


def test_no_route_answers_5xx(fuzz_worker: RunningWorker) -> None:
    raw = httpx.get(f"{fuzz_worker.http}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {(op.method.upper(), op.path) for op in operations}
    assert {("POST", "/v1/execute"), ("GET", "/v1/sessions"), ("GET", "/metrics")} <= paths
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case) -> None:
                check(fuzz_worker, case)

            try:
                fuzz()
            except Unsatisfiable:
                # nothing to break in a route without parameters or body
                assert mode is GenerationMode.NEGATIVE, op.path
    # the run really exercised every route, with accepted and refused generations
    called = {(m.upper(), p) for m, p, _ in CALLS}
    assert called == paths
    execute = {status for m, p, status in CALLS if p == "/v1/execute"}
    assert 200 in execute and 422 in execute
    chat = {status for m, p, status in CALLS if p == "/v1/chat/completions"}
    assert 400 in chat
