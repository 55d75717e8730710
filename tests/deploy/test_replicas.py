"""Two replicas sharing Redis behind nginx (the shipped deploy/nginx/gemma-worker.conf), all
real programs: streaming through the proxy, session affinity and failover, limits counted
across replicas, a graceful drain behind the balancer, one turn at a time per session."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.wsclient import connect, recv_event, send
from tests.deploy.cluster import Cluster
from tests.programs import RedisServer

KEYS = [
    "stream-key-0123456789",
    "affinity-key-0123456789",
    "drain-key-0123456789",
    "busy-key-0123456789",
    "limit-key-0123456789",
    "concurrent-key-0123456789",
    "responses-key-0123456789",
]
COUNTING = "Count from 1 to 100: 1, 2, 3, 4,"


def auth(key: str, session: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if session is not None:
        headers["X-Session-Id"] = session
    return headers


class BackgroundStream:
    """A streamed ``/v1/execute`` read on a thread: its worker id, status and events."""

    def __init__(self, base: str, key: str, max_tokens: int, session: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.worker_id = ""
        self.status = 0
        self.streaming = threading.Event()
        self._args = (base, key, max_tokens, session)
        self._thread = threading.Thread(target=self._read)
        self._thread.start()
        assert self.streaming.wait(30), "no token within 30 s"

    def _read(self) -> None:
        base, key, max_tokens, session = self._args
        body = {"input": COUNTING, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        with httpx.stream(
            "POST", f"{base}/v1/execute", json=body, headers=auth(key, session), timeout=120
        ) as r:
            self.worker_id, self.status = r.headers["X-Worker-Id"], r.status_code
            for line in r.iter_lines():
                self.events.append(json.loads(line))
                if self.events[-1]["type"] == "token":
                    self.streaming.set()

    def join(self) -> dict[str, Any]:
        """Wait for the end; the last event."""
        self._thread.join(60)
        assert not self._thread.is_alive()
        return self.events[-1]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Cluster]:
    c = Cluster.start(
        tmp_path_factory.mktemp("cluster"),
        redis_server,
        {"GEMMA_API_KEYS": ",".join(KEYS), "GEMMA_DRAIN_GRACE_SECONDS": "30"},
    )
    yield c
    c.stop()


def execute(
    cluster: Cluster, key: str, body: dict[str, Any], session: str | None = None
) -> httpx.Response:
    return httpx.post(
        f"{cluster.http}/v1/execute",
        json={"temperature": 0, **body},
        headers=auth(key, session),
        timeout=120,
    )


def test_streams_arrive_token_by_token_through_nginx(cluster: Cluster) -> None:
    # WebSocket: token events arrive one at a time, spread over the generation.
    async def ws_stream() -> list[float]:
        async with connect(cluster.ws, additional_headers=auth("stream-key-0123456789")) as ws:
            assert ws.response is not None
            assert ws.response.headers["X-Worker-Id"] in {"a", "b"}
            await send(ws, {"input": COUNTING, "max_tokens": 40, "temperature": 0})
            times = []
            while True:
                event = await recv_event(ws)
                if event["type"] == "token":
                    times.append(time.monotonic())
                if event["type"] in {"result", "error"}:
                    assert event["type"] == "result", event
                    times.append(time.monotonic())
                    return times

    times = asyncio.run(ws_stream())
    assert len(times) >= 30
    assert times[-1] - times[0] > 0.3, "the tokens came in one burst: something buffers"

    # ND-JSON: the first token line is read long before the result line is.
    with httpx.stream(
        "POST",
        f"{cluster.http}/v1/execute",
        json={"input": COUNTING, "max_tokens": 40, "temperature": 0, "stream": True},
        headers=auth("stream-key-0123456789"),
        timeout=60,
    ) as r:
        assert r.status_code == 200
        first_token = last = None
        for line in r.iter_lines():
            event = json.loads(line)
            if event["type"] == "token" and first_token is None:
                first_token = time.monotonic()
            if event["type"] == "result":
                last = time.monotonic()
    assert first_token is not None and last is not None
    assert last - first_token > 0.3, "the ND-JSON stream was buffered"

    # SSE, read by the openai SDK through nginx.
    oa = openai.OpenAI(base_url=f"{cluster.http}/v1", api_key="stream-key-0123456789")
    stamps = []
    pieces = []
    for chunk in oa.completions.create(
        model="gemma", prompt=COUNTING, max_tokens=40, temperature=0, stream=True
    ):
        stamps.append(time.monotonic())
        pieces.append(chunk.choices[0].text if chunk.choices else "")
    assert "5" in "".join(pieces)
    assert len(stamps) >= 20 and stamps[-1] - stamps[0] > 0.3, "the SSE stream was buffered"


def test_a_session_sticks_to_a_replica_and_survives_its_death(cluster: Cluster) -> None:
    key = "affinity-key-0123456789"
    first = execute(cluster, key, {"input": "Question: Name a colour.\nAnswer:", "max_tokens": 8})
    assert first.status_code == 200, first.text
    session = first.json()["session_id"]
    # From its second turn on, the session's requests carry X-Session-Id and stay on one replica.
    ran_on = []
    for turn in range(10):
        r = execute(
            cluster,
            "affinity-key-0123456789",
            {"input": f"Question: And another, number {turn}?\nAnswer:", "max_tokens": 6},
            session,
        )
        assert r.status_code == 200, r.text
        assert r.json()["session_id"] == session
        ran_on.append(r.headers["X-Worker-Id"])
        if turn > 0:  # the replica kept the session's cache
            assert r.json()["usage"]["cached_tokens"] > 0
    assert len(set(ran_on)) == 1, ran_on
    home = cluster.replica(ran_on[0])
    before = r.json()["usage"]["prompt_tokens"]

    home.signal(signal.SIGKILL)
    home.wait_exit()
    after = execute(
        cluster, key, {"input": "Question: One more?\nAnswer:", "max_tokens": 6}, session
    )
    assert after.status_code == 200, after.text
    assert after.headers["X-Worker-Id"] == cluster.other(home.name).name
    usage = after.json()["usage"]
    # the whole history came from Redis and was processed again on the survivor (which may
    # only have kept the first turn, when round robin sent that one to it)
    assert usage["prompt_tokens"] > before
    assert usage["cached_tokens"] < before // 2
    history = httpx.get(
        f"{cluster.http}/v1/sessions/{session}", headers=auth("affinity-key-0123456789"), timeout=10
    )
    assert history.status_code == 200
    assert history.json()["turns"] == 12
    assert history.json()["history"][-1]["user"] == "Question: One more?\nAnswer:"
    cluster.restart()


def test_a_draining_replica_finishes_its_stream_while_new_work_goes_elsewhere(
    cluster: Cluster,
) -> None:
    stream = BackgroundStream(cluster.http, "drain-key-0123456789", 120)
    draining = cluster.replica(stream.worker_id)
    survivor = cluster.other(draining.name)
    draining.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert httpx.get(f"{draining.http}/ready", timeout=5).status_code == 503

    # New work while it drains: round robin sends half of it to the draining replica, which
    # answers 503 before doing anything; nginx retries those on the survivor.
    for i in range(6):
        r = execute(
            cluster,
            "drain-key-0123456789",
            {"input": f"Question: {i} + 1?\nAnswer:", "max_tokens": 3},
        )
        assert r.status_code == 200, r.text
        assert r.headers["X-Worker-Id"] == survivor.name

    async def ws_turn() -> tuple[str, str]:
        async with connect(cluster.ws, additional_headers=auth("drain-key-0123456789")) as ws:
            assert ws.response is not None
            await send(ws, {"input": "Question: 2 + 2?\nAnswer:", "max_tokens": 3})
            while (event := await recv_event(ws))["type"] not in {"result", "error"}:
                pass
            return ws.response.headers["X-Worker-Id"], event["type"]

    for _ in range(2):
        assert asyncio.run(ws_turn()) == (survivor.name, "result")

    last = stream.join()
    assert last["type"] == "result", last
    assert last["finish_reason"] == "length"
    assert draining.wait_exit(60) == 0
    cluster.restart()


def test_two_replicas_never_run_two_turns_of_one_session(cluster: Cluster) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")
    first = httpx.post(
        f"{a.http}/v1/execute",
        json={"input": "Question: Name a fruit.\nAnswer:", "max_tokens": 4, "temperature": 0},
        headers=auth("busy-key-0123456789"),
        timeout=60,
    )
    assert first.status_code == 200, first.text
    session = first.json()["session_id"]
    turn = BackgroundStream(a.http, "busy-key-0123456789", 80, session)
    clash = httpx.post(
        f"{b.http}/v1/execute",
        json={"input": "Question: And a vegetable?\nAnswer:", "max_tokens": 4},
        headers=auth("busy-key-0123456789", session),
        timeout=60,
    )
    assert clash.status_code == 409
    assert clash.json()["code"] == "SESSION_BUSY"
    assert clash.headers["X-Worker-Id"] == "b"
    assert turn.join()["type"] == "result"
    assert turn.status == 200
    # once the turn is over, the other replica may take the next one, with the history
    then = httpx.post(
        f"{b.http}/v1/execute",
        json={"input": "Question: And a vegetable?\nAnswer:", "max_tokens": 4},
        headers=auth("busy-key-0123456789", session),
        timeout=60,
    )
    assert then.status_code == 200, then.text
    # turns sent the moment the previous answer arrives, alternating replicas: never busy
    for turn in range(6):
        replica = (a, b)[turn % 2]
        r = httpx.post(
            f"{replica.http}/v1/execute",
            json={"input": f"Question: {turn}?\nAnswer:", "max_tokens": 1},
            headers=auth("busy-key-0123456789", session),
            timeout=60,
        )
        assert r.status_code == 200, r.text


def test_the_limits_hold_across_replicas(cluster: Cluster) -> None:
    cluster.restart({"GEMMA_RATE_LIMIT_REQUESTS": "10/minute", "GEMMA_MAX_CONCURRENT_PER_KEY": "1"})
    seen = set()
    for i in range(10):
        r = execute(
            cluster,
            "limit-key-0123456789",
            {"input": f"Question: {i} + 2?\nAnswer:", "max_tokens": 1},
        )
        assert r.status_code == 200, (i, r.text)
        seen.add(r.headers["X-Worker-Id"])
    assert seen == {"a", "b"}, "round robin should have used both replicas"
    refused = set()
    for _ in range(2):  # round robin: one lands on each replica
        r = execute(
            cluster, "limit-key-0123456789", {"input": "Question: 1 + 1?\nAnswer:", "max_tokens": 1}
        )
        assert r.status_code == 429, r.text
        assert r.json()["code"] == "RATE_LIMITED"
        assert int(r.headers["Retry-After"]) >= 1
        refused.add(r.headers["X-Worker-Id"])
    assert refused == {"a", "b"}
    # another key is not affected
    assert (
        execute(cluster, "stream-key-0123456789", {"input": "Hi", "max_tokens": 1}).status_code
        == 200
    )


def test_a_stored_response_is_continued_and_deleted_on_the_other_replica(cluster: Cluster) -> None:
    """Responses API answers live in Redis: replica b continues, reads and deletes what
    replica a answered."""
    key = "responses-key-0123456789"
    a, b = (
        openai.OpenAI(base_url=f"{cluster.replica(n).http}/v1", api_key=key, max_retries=0)
        for n in ("a", "b")
    )
    with a, b:
        first = a.responses.create(model="m", input=COUNTING, max_output_tokens=4, temperature=0)
        second = b.responses.create(
            model="m",
            input="Go on.",
            previous_response_id=first.id,
            max_output_tokens=4,
            temperature=0,
        )
        assert second.usage is not None and first.usage is not None
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        assert b.responses.retrieve(first.id).output_text == first.output_text
        b.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(first.id)
        assert a.responses.retrieve(second.id).previous_response_id == first.id
