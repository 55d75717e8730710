"""The OpenAI dialect over plain HTTP: error shapes and status codes, log-probabilities,
llama-server's tokenizer routes (real model)."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker


def post(worker: RunningWorker, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(f"{worker.http}{path}", json=body, timeout=60, **kw)


def test_tokenize_and_detokenize_round_trip(worker: RunningWorker) -> None:
    tokens = post(worker, "/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    with_bos = post(worker, "/tokenize", {"content": "Hello world", "add_special": True}).json()
    assert with_bos["tokens"][1:] == tokens
    pieces = post(worker, "/tokenize", {"content": "Hello world", "with_pieces": True}).json()
    assert [p["id"] for p in pieces["tokens"]] == tokens
    assert "".join(p["piece"] for p in pieces["tokens"]) == "Hello world"
    back = post(worker, "/detokenize", {"tokens": tokens}).json()
    assert back == {"content": "Hello world"}


def test_detokenize_refuses_ids_outside_the_vocabulary(worker: RunningWorker) -> None:
    for bad in ([10**9], [-1]):
        r = post(worker, "/detokenize", {"tokens": bad})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 30}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"x": 1}}, "logit_bias"),
        (
            {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
            "tool_choice",
        ),
    ],
)
def test_bad_chat_requests_are_400_in_openai_shape(
    worker: RunningWorker, body: dict[str, Any], param: str
) -> None:
    r = post(worker, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_completion_refusals(worker: RunningWorker) -> None:
    for extra, field in (({"echo": True}, "echo"), ({"suffix": "x"}, "suffix")):
        r = post(worker, "/v1/completions", {"prompt": PARIS_PROMPT, **extra})
        assert r.status_code == 400 and field in r.json()["error"]["message"]
    r = httpx.post(
        f"{worker.http}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400 and "error" in r.json()


def test_context_overflow_is_context_length_exceeded(worker: RunningWorker) -> None:
    r = post(
        worker,
        "/v1/completions",
        {"prompt": "word " * 1500, "max_tokens": 8},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_chat_logprobs_have_openais_shape(worker: RunningWorker) -> None:
    body = {
        "messages": [{"role": "user", "content": "Count: one, two,"}],
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    out = post(worker, "/v1/chat/completions", body).json()
    choice = out["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode() == entry["token"]
        top = entry["top_logprobs"]
        assert len(top) == 3
        # greedy: the chosen token is the most likely one
        assert top[0]["token"] == entry["token"]
        assert math.isclose(top[0]["logprob"], entry["logprob"], abs_tol=1e-4)
        assert top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]


def test_completion_logprobs_legacy_shape(worker: RunningWorker) -> None:
    out = post(
        worker,
        "/v1/completions",
        {"prompt": PARIS_PROMPT, "max_tokens": 3, "temperature": 0, "logprobs": 2},
    ).json()
    lp = out["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert all(len(t) <= 2 for t in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0


def test_logit_bias_bans_a_token(worker: RunningWorker) -> None:
    body = {"prompt": PARIS_PROMPT, "max_tokens": 2, "temperature": 0}
    plain = post(worker, "/v1/completions", body).json()["choices"][0]["text"]
    paris = post(worker, "/tokenize", {"content": " Paris"}).json()["tokens"][0]
    banned = post(worker, "/v1/completions", {**body, "logit_bias": {str(paris): -100}}).json()
    assert "Paris" in plain and "Paris" not in banned["choices"][0]["text"]


def test_streamed_failure_before_start_keeps_its_status(worker: RunningWorker) -> None:
    r = post(
        worker,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "word " * 1500}], "stream": True},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_openai_401_and_413_in_openai_shape() -> None:
    key = "k" * 32
    w = start_worker(make_settings(api_keys=[key], max_body_bytes=2000))
    try:
        r = post(w, "/v1/chat/completions", {"messages": []})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        r = post(w, "/v1/chat/completions", big, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 413 and "error" in r.json()
        # the house routes keep their own shape
        r = post(w, "/v1/execute", {"input": "x"})
        assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    finally:
        w.stop()


def test_sse_stream_ends_with_done(worker: RunningWorker) -> None:
    body = {"prompt": PARIS_PROMPT, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{worker.http}/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks).startswith(" Paris")
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_grammar_dead_end_fails_only_that_request(worker: RunningWorker) -> None:
    # Once the object is complete the grammar allows only end-of-generation tokens, which the
    # bias bans: the request ends with a 400, and the worker carries on.
    eog = [
        post(worker, "/tokenize", {"content": t}).json()["tokens"]
        for t in ("<eos>", "<end_of_turn>", "</s>")
    ]
    body = {
        "prompt": 'Reply with JSON like {"capital": "..."}\nAnswer:',
        "max_tokens": 200,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "logit_bias": {str(t[0]): -100 for t in eog},
        "messages": [{"role": "user", "content": 'Reply with JSON like {"capital": "..."}'}],
    }
    r = post(worker, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert "grammar" in r.json()["error"]["message"]
    ok = post(worker, "/v1/completions", {"prompt": PARIS_PROMPT, "max_tokens": 2})
    assert ok.status_code == 200


def test_lone_surrogates_are_400_not_500(worker: RunningWorker) -> None:
    cases = [
        ("/tokenize", b'{"content": "a\\ud800b"}'),
        ("/v1/completions", b'{"prompt": "a\\ud800b", "max_tokens": 2}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
    ]
    for path, raw in cases:
        r = httpx.post(
            f"{worker.http}{path}",
            content=raw,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 400, (path, r.text)
    digits = post(worker, "/v1/completions", {"prompt": "x", "logit_bias": {"²": 1}})
    assert digits.status_code == 400
