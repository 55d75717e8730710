"""Readiness while loading and overload (on the fake engine: the app's side of them), and
failures of the real engine: each on its own worker."""

from __future__ import annotations

import threading

import httpx
import pytest

from gemma_worker.engine import llama as llama_mod
from gemma_worker.engine.job import GenerationSpec
from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, make_settings, start_worker
from tests.fake_engine import FakeEngine


def test_ready_is_503_until_the_model_is_loaded() -> None:
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate)
    worker = start_worker(make_settings(), engine, wait_ready=False)
    try:
        r = httpx.get(f"{worker.http}/ready")
        assert r.status_code == 503
        assert r.json()["status"] == "loading"
        assert httpx.get(f"{worker.http}/health").status_code == 200
        r = httpx.post(f"{worker.http}/v1/execute", json={"input": "hi"})
        assert r.status_code == 503
        assert r.json()["code"] == "OVERLOADED"
        assert "Retry-After" in r.headers
        gate.set()
        for _ in range(200):
            r = httpx.get(f"{worker.http}/ready")
            if r.status_code == 200:
                break
            threading.Event().wait(0.05)
        assert r.status_code == 200
        assert r.json()["model_loaded"] is True
    finally:
        gate.set()
        worker.stop()


async def test_full_queue_is_overloaded_at_once() -> None:
    worker = start_worker(
        make_settings(), FakeEngine(slots=1, max_queue=1, token_delay=0.02, script=long_answer)
    )
    try:
        async with connect(worker.ws) as ws:
            long = {"input": PARIS_PROMPT, "max_tokens": 300, "stateless": True}
            await send(ws, {**long, "request_id": "run"})
            await send(ws, {**long, "request_id": "wait"})
            seen: dict[str, list[dict[str, object]]] = {"run": [], "wait": []}
            while not any(e["type"] == "token" for e in seen["run"]) or not any(
                e["type"] == "reasoning" and e.get("stage") == "queued" for e in seen["wait"]
            ):
                event = await recv_event(ws)
                seen[str(event["request_id"])].append(event)
            queued = next(e for e in seen["wait"] if e.get("stage") == "queued")
            assert queued["queue_position"] == 1
            async with httpx.AsyncClient() as client:
                r = await client.post(f"{worker.http}/v1/execute", json={"input": "hi"})
            assert r.status_code == 503
            assert r.json()["code"] == "OVERLOADED"
            assert int(r.headers["Retry-After"]) >= 1
            async with connect(worker.ws) as other:
                events = await run_request(other, {"input": "hi", "request_id": "third"})
                assert events[-1]["code"] == "OVERLOADED"
            # cancelling the queued one and the running one frees everything
            await send(ws, {"type": "cancel", "request_id": "wait"})
            await send(ws, {"type": "cancel", "request_id": "run"})
            finals = {}
            while len(finals) < 2:
                event = await recv_event(ws)
                if event["type"] == "result":
                    finals[event["request_id"]] = event
            assert {e["finish_reason"] for e in finals.values()} == {"cancelled"}
            assert finals["wait"]["usage"]["completion_tokens"] == 0
            events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 4})
            assert events[-1]["type"] == "result"
    finally:
        worker.stop()


def long_answer(spec: GenerationSpec, prompt: str) -> list[str]:
    return [f" {n}" for n in range(1000)]


async def test_decode_failure_is_inference_error_and_the_worker_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_decode = llama_mod.LlamaModel.decode
    fail = threading.Event()

    def flaky_decode(self: llama_mod.LlamaModel, batch: llama_mod.Batch) -> int:
        return -1 if fail.is_set() else real_decode(self, batch)

    monkeypatch.setattr(llama_mod.LlamaModel, "decode", flaky_decode)
    worker = start_worker(make_settings(parallel=2))
    try:
        async with connect(worker.ws) as ws:
            fail.set()
            events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 4})
            assert events[-1]["type"] == "error"
            assert events[-1]["code"] == "INFERENCE_ERROR"
            assert "Traceback" not in events[-1]["error"]
            fail.clear()
            events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 8})
            assert events[-1]["type"] == "result"
            assert "Paris" in events[-1]["content"]
    finally:
        worker.stop()


async def test_engine_crash_fails_requests_and_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_decode(self: llama_mod.LlamaModel, batch: llama_mod.Batch) -> int:
        raise RuntimeError("simulated engine bug")

    worker = start_worker(make_settings(parallel=1))
    try:
        monkeypatch.setattr(llama_mod.LlamaModel, "decode", broken_decode)
        async with connect(worker.ws) as ws:
            events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 4})
            assert events[-1]["type"] == "error"
            assert events[-1]["code"] == "INFERENCE_ERROR"
            assert "simulated" not in events[-1]["error"]
            async with httpx.AsyncClient() as client:
                r = await client.get(f"{worker.http}/ready")
                assert r.status_code == 503
                assert r.json()["status"] == "failed"
                assert (await client.get(f"{worker.http}/health")).status_code == 200
            events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 4})
            assert events[-1]["code"] == "OVERLOADED"
    finally:
        worker.stop()
