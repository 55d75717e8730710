"""Streams whose client stopped reading give their slot back (``GEMMA_STREAM_STALL_TIMEOUT``).

A client that never reads keeps its socket full: every write then waits, the generation's
event buffer fills, and the generation pauses in its slot for ever. Here a write that has
waited the stall timeout ends the stream: the generation is cancelled (its slot freed) and
the metrics count it. The connection itself is left to close when the client goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Send

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.runtime.metrics import Metrics

log = logging.getLogger(__name__)


def stalled_error(stall_timeout: float) -> WorkerError:
    """What a stream cut for a stalled client ends with."""
    return WorkerError(
        ErrorCode.STREAM_STALLED,
        f"the stream was cancelled: the client took no data for {stall_timeout:g} s",
    )


def guarded_stream(
    body: AsyncIterator[str],
    *,
    media_type: str,
    stall_timeout: float,
    metrics: Metrics,
    stall_record: Callable[[WorkerError], str],
    headers: Mapping[str, str] | None = None,
) -> StallGuardedStream:
    """A streamed REST answer of ``body``, cancelled if its client stalls (counted); a cut
    stream ends with ``stall_record(error)`` (the dialect's error record), so a client that
    reads again sees it was cut."""
    return StallGuardedStream(
        body,
        media_type=media_type,
        headers=headers,
        stall_timeout=stall_timeout,
        on_stall=metrics.stalled_streams.labels(transport="http").inc,
        stall_record=stall_record(stalled_error(stall_timeout)),
    )


class StallGuardedStream(StreamingResponse):
    """A streamed answer that stops, closing its body iterator (which cancels its
    generation), once one write has waited ``stall_timeout`` seconds for the client."""

    def __init__(
        self,
        *args: object,
        stall_timeout: float,
        on_stall: Callable[[], object],
        stall_record: str = "",
        **kw: object,
    ) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.stall_record = stall_record.encode()

    async def stream_response(self, send: Send) -> None:
        """Send the head and every chunk, each write within the stall timeout."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        stalled = False
        async with contextlib.aclosing(self.body_iterator) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                data = (
                    chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
                )
                try:
                    async with asyncio.timeout(self.stall_timeout):
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                except TimeoutError:
                    log.info("stream stalled: the client stopped reading; cancelled")
                    self.on_stall()
                    stalled = True
                    break  # leaving the block closes the iterator: the generation ends
        # What is left goes out when the client reads again, or never (the connection then
        # closes when the client goes; the slot is already free).
        if stalled and self.stall_record:
            record = self.stall_record
            await send({"type": "http.response.body", "body": record, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
