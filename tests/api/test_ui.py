"""The chat page's files over HTTP: where they are, what they are sent with, what they may load.

What the page does is tested in a real browser (tests/ui)."""

from __future__ import annotations

import re

import httpx
import pytest
from websockets.asyncio.client import connect

from gemma_worker.api.ui import CONTENT_SECURITY_POLICY
from tests.api.wsclient import run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker

ASSETS = ("", "app.js", "markdown.js", "style.css")


def test_a_browser_at_the_root_is_sent_to_the_page(worker: RunningWorker) -> None:
    page = httpx.get(worker.http + "/", headers={"accept": "text/html,*/*;q=0.8"})
    assert page.status_code == 303 and page.headers["location"] == "ui/"  # relative: sub-paths
    api = httpx.get(worker.http + "/", headers={"accept": "application/json"})
    assert api.status_code == 200 and api.json()["name"] == "FazAI Gemma Worker"
    assert httpx.get(worker.http + "/").json()["version"]  # curl's */* gets JSON too
    moved = httpx.get(worker.http + "/ui")
    assert moved.status_code == 308 and moved.headers["location"] == "ui/"


def test_the_page_and_its_files_are_small_strict_and_self_contained(
    worker: RunningWorker,
) -> None:
    total = 0
    for name in ASSETS:
        r = httpx.get(f"{worker.http}/ui/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["x-content-type-options"] == "nosniff"
        total += len(r.content)
        # No CDN, no absolute URL: works offline and under a proxy's sub-path.
        assert not re.search(r"""(src|href)=["'](https?:)?//""", r.text), name
    assert total < 150_000
    html = httpx.get(f"{worker.http}/ui/").text
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts and all("src=" in tag for tag in scripts)  # no inline script
    assert not re.search(r"<script[^>]*>[^<]+</script>", html)
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handler
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapp.py", "%2e%2e%2fsettings.py", "index.htm"])
def test_only_the_pages_own_files_are_served(worker: RunningWorker, name: str) -> None:
    r = httpx.get(f"{worker.http}/ui/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")


async def test_an_auth_message_to_a_worker_without_keys_is_ignored(worker: RunningWorker) -> None:
    async with connect(worker.ws) as ws:
        await send(ws, {"type": "auth", "token": "a-key-this-worker-does-not-need"})
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2})
        assert events[0]["type"] == "session"  # no error for the auth message
        assert events[-1]["type"] == "result"
