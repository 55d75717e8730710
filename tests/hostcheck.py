"""Probes of the Host check, shared by the direct tests (tests/api/test_hosts.py) and the
same tests through nginx (tests/deploy/test_nginx_hosts.py): one request per route family,
and what its refusal must look like in that family's dialect."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

import httpx

FOREIGN = "attacker.test"
PROMPT = "Question: What is the capital of France?\nAnswer:"


@dataclass(frozen=True)
class Probe:
    """One request of a route family; ``dialect``: house, openai or ollama."""

    family: str
    dialect: str
    method: str
    path: str
    body: dict[str, Any] | None = None

    def send(self, base: str, host: str, **headers: str) -> httpx.Response:
        return httpx.request(
            self.method,
            f"{base}{self.path}",
            json=self.body,
            headers={"Host": host, **headers},
            timeout=60,
        )

    def assert_refused(self, r: httpx.Response) -> None:
        """403 with the dialect's JSON error body, and nothing that names the worker."""
        assert r.status_code == 403, (self.path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
        assert "x-worker-id" not in r.headers
        body = r.json()
        if self.dialect == "openai":
            assert body["error"]["code"] == "host_not_allowed"
            assert body["error"]["type"] == "invalid_request_error"
        elif self.dialect == "ollama":
            assert set(body) == {"error"} and isinstance(body["error"], str)
        else:
            assert body["status"] == "error" and body["code"] == "HOST_NOT_ALLOWED"
        assert FOREIGN not in r.text

    def assert_served(self, r: httpx.Response) -> None:
        assert r.status_code == 200, (self.path, r.status_code, r.text)


ASK = {"max_tokens": 2, "temperature": 0}
PROBES = [
    Probe("native REST", "house", "POST", "/v1/execute", {"input": PROMPT, **ASK}),
    Probe("service", "house", "GET", "/"),
    Probe("service", "house", "GET", "/health"),
    Probe("service", "house", "GET", "/ready"),
    Probe("openai", "openai", "POST", "/v1/completions", {"prompt": PROMPT, **ASK}),
    Probe(
        "openai",
        "openai",
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], **ASK},
    ),
    Probe("openai", "openai", "GET", "/v1/models"),
    Probe("openai", "openai", "POST", "/v1/embeddings", {"input": "restart nginx"}),
    Probe("ollama", "ollama", "POST", "/api/embed", {"model": "all-minilm", "input": "nginx"}),
    Probe(
        "ollama",
        "ollama",
        "POST",
        "/api/generate",
        {"model": "gemma3", "prompt": PROMPT, "stream": False, "options": {"num_predict": 2}},
    ),
    Probe("ollama", "ollama", "GET", "/api/tags"),
    Probe("sessions", "house", "GET", "/v1/sessions"),
    Probe("metrics", "house", "GET", "/metrics"),
    Probe("ui", "house", "GET", "/ui/"),
    Probe("docs", "house", "GET", "/docs"),
]


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange written by hand (so ``Host`` is exactly what the test says):
    status, headers (lower-cased names), body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        header_block, _, rest = data.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


def handshake(
    port: int, host: str, origin: str | None = None, path: str = "/ws"
) -> tuple[int, dict[str, str], bytes]:
    """A raw WebSocket opening handshake naming ``host``: status, headers, body."""
    head = (
        f"GET {path} HTTP/1.1\nHost: {host}\nUpgrade: websocket\nConnection: Upgrade\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n"
    )
    if origin is not None:
        head += f"Origin: {origin}\n"
    return raw_request(port, head)


def assert_handshake_refused(status: int, headers: dict[str, str], body: bytes) -> None:
    """403 with the house error body, and no upgrade."""
    assert status == 403, (status, body)
    assert "upgrade" not in headers
    payload = json.loads(body)
    assert payload["status"] == "error" and payload["code"] == "HOST_NOT_ALLOWED"
