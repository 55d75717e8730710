"""Embeddings on the real models: the openai and ollama SDKs, LangChain, Qdrant in-process,
llama.cpp's own llama-server as the yardstick, the errors, the limits and the fairness with
a running stream."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest
from websockets.asyncio.client import connect

from gemma_worker.api.app import create_app
from gemma_worker.engine.minilm import minilm_path
from gemma_worker.runtime.embedding import EmbeddingRequest, Embeddings, embed
from gemma_worker.runtime.request import Caller
from tests.api.wsclient import recv_event, send
from tests.conftest import RunningWorker, make_settings, start_worker
from tests.programs import free_port

ROOT = Path(__file__).resolve().parents[2]

NOTES = [
    "To restart the nginx web server run systemctl restart nginx.",
    "Disk usage per directory is shown by du -sh, free space by df -h.",
    "Add a cron job with crontab -e; the five fields are minute hour day month weekday.",
    "journalctl -u ssh shows the logs of the SSH daemon.",
    "Open port 443 in the firewall with ufw allow 443/tcp.",
    "Change a file's owner with chown user:group file.",
    "Create a new user account with adduser alice.",
    "Check which process listens on a port with ss -tlnp.",
    "Set the system time zone with timedatectl set-timezone Europe/Paris.",
    "Mount a USB drive by running mount /dev/sdb1 /mnt/usb.",
    "Renew Let's Encrypt certificates with certbot renew.",
    "Show the memory in use with free -m.",
]
QUESTIONS = {
    "How can I see how much space is left on my disks?": 1,
    "My web server is stuck, how do I bounce nginx?": 0,
    "Where do I read the sshd log messages?": 3,
    "How do I schedule a script to run every night?": 2,
    "How much RAM is being used right now?": 11,
}


@pytest.fixture(scope="module")
def embedder() -> Iterator[RunningWorker]:
    """A worker whose default model and built-in embedding model both serve."""
    w = start_worker(make_settings())
    yield w
    w.stop()


def _client(w: RunningWorker) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{w.http}/v1", api_key="unused", max_retries=0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


def test_openai_sdk_one_string_a_list_base64_and_dimensions(embedder: RunningWorker) -> None:
    client = _client(embedder)
    one = client.embeddings.create(model="all-minilm", input="restart nginx")
    assert one.model == "all-minilm-l6-v2" and len(one.data) == 1
    vec = np.array(one.data[0].embedding)
    assert vec.shape == (384,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    tokens = httpx.post(
        f"{embedder.http}/tokenize",
        json={"model": "all-minilm", "content": "restart nginx", "add_special": True},
    ).json()["tokens"]
    assert tokens[0] == 101 and tokens[-1] == 102  # [CLS] ... [SEP]
    assert one.usage.prompt_tokens == one.usage.total_tokens == len(tokens)

    many = client.embeddings.create(model="all-minilm", input=NOTES[:3], encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    # The SDK asks for base64 when it is not told: it decodes the answer itself.
    raw = client.embeddings.with_raw_response.create(
        model="all-minilm", input=NOTES[:3], encoding_format="base64"
    )
    packed = raw.http_response.json()["data"][1]["embedding"]
    decoded = np.frombuffer(base64.b64decode(packed), dtype="<f4")
    assert np.allclose(decoded, many.data[1].embedding, atol=1e-6)
    default = client.embeddings.create(model="all-minilm", input=NOTES[:3])
    assert np.allclose(default.data[2].embedding, many.data[2].embedding, atol=1e-6)

    short = client.embeddings.create(model="all-minilm", input=NOTES[0], dimensions=64)
    cut = np.array(short.data[0].embedding)
    full = np.array(client.embeddings.create(model="all-minilm", input=NOTES[0]).data[0].embedding)
    assert cut.shape == (64,) and abs(np.linalg.norm(cut) - 1) < 1e-5
    assert np.allclose(cut, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="all-minilm", input="x", dimensions=385)
    assert exc.value.body["param"] == "dimensions"  # type: ignore[index]


def test_token_ids_embed_like_their_text(embedder: RunningWorker) -> None:
    client = _client(embedder)
    text = "Check which process listens on a port"
    tokens = httpx.post(
        f"{embedder.http}/tokenize", json={"model": "all-minilm", "content": text}
    ).json()["tokens"]
    by_text = client.embeddings.create(model="all-minilm", input=text).data[0].embedding
    # Without the special tokens around it the ids are another input; with them, the same.
    cls_sep = [101, *tokens, 102] if tokens[0] != 101 else tokens
    both = client.embeddings.create(model="all-minilm", input=[cls_sep, cls_sep[:-1]])
    assert _cosines(np.array(both.data[0].embedding), np.array(by_text)) > 0.99999
    assert _cosines(np.array(both.data[1].embedding), np.array(by_text)) < 0.9999


def test_the_ollama_library_embed_and_the_older_route(embedder: RunningWorker) -> None:
    client = ollama.Client(host=embedder.http, timeout=120)
    try:
        _ollama_embeds(client)
    finally:
        client.close()


def _ollama_embeds(client: ollama.Client) -> None:
    answer = client.embed(model="all-minilm", input=["restart nginx", "free disk space"])
    assert len(answer.embeddings) == 2 and len(answer.embeddings[0]) == 384
    assert answer.prompt_eval_count and answer.prompt_eval_count > 4
    assert answer.total_duration and answer.total_duration > 0
    assert answer.load_duration is not None
    single = client.embed(model="all-minilm", input="restart nginx")
    assert np.allclose(single.embeddings[0], answer.embeddings[0], atol=1e-6)
    old = client.embeddings(model="all-minilm", prompt="restart nginx")
    assert np.allclose(old.embedding, answer.embeddings[0], atol=1e-6)
    # Ollama truncates by default; asked not to, an input over the limit is a 400 naming it.
    long = "word " * 700
    assert len(client.embed(model="all-minilm", input=[long]).embeddings[0]) == 384
    with pytest.raises(ollama.ResponseError) as exc:
        client.embed(model="all-minilm", input=["ok", long], truncate=False)
    assert exc.value.status_code == 400 and "input[1]" in exc.value.error


def test_langchain_openai_embeddings(embedder: RunningWorker) -> None:
    from langchain_openai import OpenAIEmbeddings  # noqa: PLC0415 - heavy import

    # check_embedding_ctx_length=False: send text, not OpenAI's own token ids (tiktoken).
    emb = OpenAIEmbeddings(
        model="all-minilm",
        base_url=f"{embedder.http}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
    )
    docs = emb.embed_documents(NOTES[:4])
    query = emb.embed_query("How do I restart the web server?")
    assert len(docs) == 4 and len(query) == 384
    assert int(np.argmax(np.array(docs) @ np.array(query))) == 0


def test_qdrant_in_process_finds_the_right_note(embedder: RunningWorker) -> None:
    from qdrant_client import QdrantClient, models  # noqa: PLC0415 - heavy import

    client = _client(embedder)
    vectors = [d.embedding for d in client.embeddings.create(model="all-minilm", input=NOTES).data]
    db = QdrantClient(":memory:")
    db.create_collection(
        "notes", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
    )
    db.upsert(
        "notes",
        points=[
            models.PointStruct(id=i, vector=v, payload={"text": NOTES[i]})
            for i, v in enumerate(vectors)
        ],
    )
    for question, expected in QUESTIONS.items():
        q = client.embeddings.create(model="all-minilm", input=question).data[0].embedding
        hits = db.query_points("notes", query=q, limit=3).points
        assert hits[0].id == expected, (question, [h.payload for h in hits])


def test_related_sentences_score_higher_than_unrelated(embedder: RunningWorker) -> None:
    """sentence-transformers' published behaviour of all-MiniLM-L6-v2, on a fixed set."""
    pairs = [
        ("A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."),
        ("The new movie is awesome", "The new movie is so great", "The cat sits outside"),
        ("How do I reset my password?", "I forgot my password", "The weather is sunny today"),
        ("A woman is playing violin.", "A woman plays the violin.", "Two men pushed carts."),
    ]
    texts = [t for triple in pairs for t in triple]
    data = _client(embedder).embeddings.create(model="all-minilm", input=texts).data
    vec = np.array([d.embedding for d in data]).reshape(len(pairs), 3, -1)
    related = _cosines(vec[:, 0], vec[:, 1])
    unrelated = _cosines(vec[:, 0], vec[:, 2])
    assert np.all(related > unrelated + 0.2), (related, unrelated)
    assert np.all(related > 0.6)


def test_an_input_embeds_the_same_alone_and_batched(embedder: RunningWorker) -> None:
    client = _client(embedder)
    alone = [client.embeddings.create(model="all-minilm", input=n).data[0].embedding for n in NOTES]
    batched = [d.embedding for d in client.embeddings.create(model="all-minilm", input=NOTES).data]
    assert np.min(_cosines(np.array(alone), np.array(batched))) > 0.99999


def test_fast_kernels_decode_short_batches_by_shape(embedder: RunningWorker) -> None:
    """With kernels that need not be batch-invariant, the decode plans are on
    (``llama_embed.decode_plan``, tests/engine/test_llama_embed.py shows which runs): a lone
    short input, a lone 48-63-token one and both together get the deterministic worker's
    vectors, up to rounding."""
    long_note = " ".join(NOTES[:3])
    texts = [NOTES[0], long_note]
    want = [
        d.embedding
        for d in _client(embedder).embeddings.create(model="all-minilm", input=texts).data
    ]
    fast = start_worker(make_settings(flash_attn=True))
    try:
        kernels = httpx.get(f"{fast.http}/").json()["kernels"]
        assert kernels["batch_invariant"] is False
        client = _client(fast)
        n_long = client.embeddings.create(model="all-minilm", input=long_note).usage.prompt_tokens
        assert 48 <= n_long < 64  # the padded plan
        alone = [
            client.embeddings.create(model="all-minilm", input=t).data[0].embedding for t in texts
        ]
        together = [
            d.embedding for d in client.embeddings.create(model="all-minilm", input=texts).data
        ]
    finally:
        fast.stop()
    for got in (alone, together):
        assert np.min(_cosines(np.array(got), np.array(want))) > 0.99999


def test_a_generative_model_embeds_too(embedder: RunningWorker) -> None:
    data = _client(embedder).embeddings.create(model="gemma3:270m", input=NOTES[:2]).data
    assert len(data[0].embedding) == 640
    assert abs(np.linalg.norm(data[0].embedding) - 1) < 1e-5
    # It still generates beside its embedding engine.
    r = httpx.post(
        f"{embedder.http}/v1/completions",
        json={"prompt": "Question: What is the capital of France?\nAnswer:", "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input[0]"),
        ({"input": ["fine", ""]}, "input[1]"),
        ({"input": [[101, 2000, 40000]]}, "input[0]"),
        ({"input": [5, -1]}, "input[1]"),
        ({"input": ["x"] * 10_000}, "input"),
        ({"input": ["fine", 3]}, "input[1]"),
        ({"input": ["fine", None]}, "input[1]"),
        ({"input": {"text": "x"}}, "input"),
        ({"input": "word " * 600}, "input[0]"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": ["fine", "lone \ud800 surrogate"]}, "input[1]"),
        ({"input": ["fine", "lone \ud800 " + "word " * 1000], "truncate": True}, "input[1]"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    embedder: RunningWorker, body: dict[str, object], param: str
) -> None:
    r = httpx.post(  # json.dumps escapes a lone surrogate, which httpx's json= cannot encode
        f"{embedder.http}/v1/embeddings",
        content=json.dumps({"model": "all-minilm", **body}),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "/" not in error["message"] and "Traceback" not in r.text
    ok = httpx.post(f"{embedder.http}/v1/embeddings", json={"input": "still fine"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("path", "content", "content_type", "code"),
    [
        ("/v1/embeddings", b'{"input": "x"', "application/json", "INVALID_JSON"),
        ("/v1/embeddings", b'["x"]', "application/json", "INVALID_JSON"),
        ("/v1/embeddings", b"", "application/json", "INVALID_JSON"),
        ("/v1/embeddings", b'{"input": "x"}', "text/plain", "INVALID_JSON"),
        ("/v1/embeddings", b'{"input": "x"}', None, "INVALID_JSON"),
        ("/v1/embeddings", b'{"input": "x", "dimensions": "many"}', "application/json", None),
        ("/api/embed", b'{"input": "x", "truncate": []}', "application/json", None),
        ("/api/embeddings", b"{nope", "application/json", "INVALID_JSON"),
        ("/v1/embeddings", b"[" * 100_000, "application/json", "INVALID_JSON"),
        ("/v1/embeddings", b'{"input": "x", "model": "\\ud800"}', "application/json", None),
        ("/api/embed", b'{"input": "x", "model": "\\ud800"}', "application/json", None),
        ("/api/embed", b'{"input": "x", "options": {"top_k": "many"}}', "application/json", None),
    ],
)
def test_a_body_that_is_not_the_routes_json_is_a_400(
    embedder: RunningWorker, path: str, content: bytes, content_type: str | None, code: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = httpx.post(f"{embedder.http}{path}", content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert "Traceback" not in r.text and "/" not in r.text.replace(path, "")
    if path.startswith("/v1/"):
        error = r.json()["error"]
        assert error["code"].upper() == (code or "INVALID_REQUEST"), error
        if code is None:
            assert error["param"] in {"dimensions", "model"}
    else:
        assert r.json()["error"]  # Ollama's shape: {"error": "..."}


def test_ollama_reads_a_form_typed_body_as_json(embedder: RunningWorker) -> None:
    # Ollama's documented `curl -d` sends application/x-www-form-urlencoded.
    r = httpx.post(
        f"{embedder.http}/api/embed",
        content=b'{"model": "all-minilm", "input": "hello"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384


def test_ollama_errors_and_generation_refused_on_an_embedding_model(
    embedder: RunningWorker,
) -> None:
    for body in ({"input": []}, {"input": ""}, {"input": ["a", 1]}):
        r = httpx.post(f"{embedder.http}/api/embed", json={"model": "all-minilm", **body})
        assert r.status_code == 400 and "input" in r.json()["error"], r.text
    r = httpx.post(
        f"{embedder.http}/v1/chat/completions",
        json={"model": "all-minilm", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    show = httpx.post(f"{embedder.http}/api/show", json={"model": "all-minilm"}).json()
    assert show["capabilities"] == ["embedding"]


def test_metrics_count_embeddings(embedder: RunningWorker) -> None:
    before = httpx.get(f"{embedder.http}/metrics").text
    _client(embedder).embeddings.create(model="all-minilm", input=NOTES[:5])
    after = httpx.get(f"{embedder.http}/metrics").text

    def value(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('gemma_worker_embedding_inputs_total{model="all-minilm-l6-v2"}'):
                return float(line.split()[-1])
        return 0.0

    assert value(after) - value(before) == 5
    routes = {
        line.split('route="')[1].split('"')[0]
        for line in after.splitlines()
        if line.startswith("gemma_worker_http_requests_total{")
    }
    assert "/v1/embeddings" in routes  # labelled by its route, not "unmatched"


def test_input_tokens_count_against_the_token_rate_limit() -> None:
    w = start_worker(make_settings(rate_limit_tokens="100/minute"))
    try:
        url = f"{w.http}/v1/embeddings"
        first = httpx.post(url, json={"input": ["word " * 60, "word " * 60]})
        assert first.status_code == 200 and first.json()["usage"]["prompt_tokens"] == 124
        second = httpx.post(url, json={"input": "one more"})
        assert second.status_code == 429, second.text
    finally:
        w.stop()


def _llama_server() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/build-llama-server.sh"), sys.executable],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return out.stdout.strip().splitlines()[-1]


def test_vectors_match_llama_server_on_the_same_gguf(embedder: RunningWorker) -> None:
    """llama.cpp's own server, built from the same vendored llama.cpp, on the same file."""
    port = free_port()
    proc = subprocess.Popen(
        [
            _llama_server(),
            *("-m", str(minilm_path()), "--embeddings", "--pooling", "mean"),
            *("--host", "127.0.0.1", "--port", str(port), "-b", "512", "-ub", "512"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "llama-server failed"
            time.sleep(0.2)
        texts = [
            *NOTES,
            *QUESTIONS,
            "Ünïcödé café, naïve résumé!",
            "URL: https://example.org/a?b=1",
        ]
        theirs = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings", json={"input": texts}, timeout=60
        ).json()["data"]
        ours = _client(embedder).embeddings.create(model="all-minilm", input=texts).data
        a = np.array([d["embedding"] for d in sorted(theirs, key=lambda d: d["index"])])
        b = np.array([d.embedding for d in ours])
        assert np.min(_cosines(a, b)) >= 0.999
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[round(0.95 * (len(ordered) - 1))]


async def test_a_64_input_request_keeps_a_streams_pace(embedder: RunningWorker) -> None:
    """Embedding batches take turns with the stream's decode steps, cut short beside it:
    the stream's p95 token gap while 64-input requests run stays under 2x its gap alone.
    Alone is measured before and after (the mean of both p95s), so that the drift of a shared
    machine over the test's seconds is not taken for the embeddings' doing."""
    inputs = [f"{NOTES[i % len(NOTES)]} (note {i})" for i in range(64)]
    arrivals: list[float] = []
    window: list[float] = []

    async def embed_for_a_while() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            window.append(time.perf_counter())
            for _ in range(3):
                r = await client.post(
                    f"{embedder.http}/v1/embeddings", json={"model": "all-minilm", "input": inputs}
                )
                assert r.status_code == 200, r.text
            window.append(time.perf_counter())

    async with connect(embedder.ws) as ws:
        await send(ws, {"input": "Once upon a time", "max_tokens": 900, "stateless": True})
        task: asyncio.Task[None] | None = None
        after = 0
        cancelled = False
        while (event := await recv_event(ws))["type"] not in ("result", "error"):
            if event["type"] != "token":
                continue
            arrivals.append(time.perf_counter())
            if len(arrivals) == 80:
                task = asyncio.create_task(embed_for_a_while())
            after += len(window) == 2
            if after == 80 and not cancelled:
                await send(ws, {"type": "cancel", "request_id": event["request_id"]})
                cancelled = True
        assert task is not None
        await task
    assert cancelled, "the stream ended before the embeddings did"
    gaps = [(b - a, b) for a, b in itertools.pairwise(arrivals)]
    start, end = window
    before = [g for g, t in gaps[20:] if t < start]
    during = [g for g, t in gaps if start < t <= end]
    alone = [g for g, t in gaps if t > end + 0.1]
    assert len(during) >= 20, f"the embeddings took {end - start:.2f} s: {len(during)} gaps"
    normal = (_p95(before) + _p95(alone)) / 2
    assert _p95(during) < 2 * normal, (
        f"p95 gap {_p95(during) * 1e3:.1f} ms beside the embeddings, "
        f"{_p95(before) * 1e3:.1f} ms before and {_p95(alone) * 1e3:.1f} ms after"
    )


def test_keys_guard_embeddings_like_generation() -> None:
    full, gemma_only = "embed-key-0123456789abcdef", "gemma-key-0123456789abcdef"
    w = start_worker(make_settings(api_keys=[full, f"{gemma_only} models=gemma3:270m"]))
    try:
        url = f"{w.http}/v1/embeddings"
        body = {"model": "all-minilm", "input": "restart nginx"}
        assert httpx.post(url, json=body).status_code == 401
        ok = httpx.post(url, json=body, headers={"Authorization": f"Bearer {full}"})
        assert ok.status_code == 200
        denied = httpx.post(url, json=body, headers={"Authorization": f"Bearer {gemma_only}"})
        assert denied.status_code == 403 and denied.json()["error"]["param"] == "model"
        pooled = httpx.post(
            url,
            json={**body, "model": "gemma3:270m"},
            headers={"Authorization": f"Bearer {gemma_only}"},
        )
        assert pooled.status_code == 200
    finally:
        w.stop()


async def test_a_slow_reader_holds_nothing_while_its_answer_is_sent() -> None:
    """The pipeline gives the model and the drain's count back before it answers: a client
    that reads slowly blocks nobody (unloads and drains do not wait for it)."""
    app = create_app(make_settings())
    state = app.state.worker
    await state.lifecycle.load(lambda: state.models.load(None))
    spec = state.models.registry.resolve_embedding("all-minilm")
    seen: list[tuple[int, int]] = []

    async def deliver(result: Embeddings) -> None:
        seen.append((state.models.view(spec).running, len(state.lifecycle.active)))
        assert result.vectors.shape == (2, 384)

    request = EmbeddingRequest(
        inputs=("one note", "another note"),
        caller=Caller(None, "addr-test", None),
        transport="openai",
        model="all-minilm",
    )
    try:
        await embed(state, request, deliver)
    finally:
        await state.models.close()
    assert seen == [(0, 0)]
