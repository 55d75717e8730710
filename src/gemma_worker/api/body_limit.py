"""Request body size limit (pure ASGI): a body over the limit gets 413 before the app runs."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemma_worker.api.asgi_headers import first_header
from gemma_worker.api.errors import send_error
from gemma_worker.core.errors import ErrorCode, WorkerError


class BodyLimitMiddleware:
    """Reads each HTTP request body up to ``max_bytes`` and hands it on; more is refused.

    A ``Content-Length`` over the limit is refused without reading; a body without one (chunked)
    is read until it passes the limit. The app then gets the body, and later receives (a
    client disconnect) go to the real channel.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, count_error: Callable[[str], object] | None = None
    ) -> None:
        """``count_error(code)`` is told of each refusal (for the metrics)."""
        self.app = app
        self.max_bytes = max_bytes
        self.count_error = count_error or (lambda _code: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(send, scope["path"])
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, scope["path"])
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, path: str) -> None:
        self.count_error(ErrorCode.PAYLOAD_TOO_LARGE)
        error = WorkerError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"request body is larger than {self.max_bytes} bytes",
            max_bytes=self.max_bytes,
        )
        await send_error(send, path, error, [(b"connection", b"close")])


def _content_length(scope: Scope) -> int | None:
    value = first_header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
