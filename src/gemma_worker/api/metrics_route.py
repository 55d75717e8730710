"""``GET /metrics``: Prometheus text exposition of the app's own registry."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gemma_worker.api.deps import State

router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    summary="Prometheus metrics",
)
async def metrics(state: State) -> Response:
    """Counters and histograms of requests, tokens and latencies; gauges of current load."""
    m = state.metrics
    stats = state.stats()
    m.models_loaded.set(len(state.models.loaded()))
    m.queue_depth.set(stats.queued)
    m.slots_busy.set(stats.active)
    m.slots_total.set(stats.slots)
    m.ws_connections.set(len(state.lifecycle.connections))
    m.sessions_active.set(await asyncio.to_thread(state.sessions.store.count))
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)
