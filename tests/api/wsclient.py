"""A small WebSocket client for the tests: send requests, collect ND-JSON events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

__all__ = ["connect", "recv_event", "run_request", "send"]


async def send(ws: ClientConnection, message: dict[str, Any] | str) -> None:
    await ws.send(message if isinstance(message, str) else json.dumps(message))


async def recv_event(ws: ClientConnection, wait_s: float = 60) -> dict[str, Any]:
    async with asyncio.timeout(wait_s):
        raw = await ws.recv()
    assert isinstance(raw, str)
    assert raw.endswith("\n") and raw.count("\n") == 1, "one ND-JSON line per message"
    event: dict[str, Any] = json.loads(raw)
    return event


async def run_request(ws: ClientConnection, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one request and return its events up to and including result/error."""
    await send(ws, message)
    events = []
    while True:
        event = await recv_event(ws)
        events.append(event)
        if event["type"] in {"result", "error"}:
            return events
