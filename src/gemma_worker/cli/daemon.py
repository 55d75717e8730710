"""``--mode daemon``: serve with uvicorn and drain gracefully on SIGTERM/SIGINT.

On the first signal ``/ready`` turns 503 and new requests are refused; generations in flight
finish (within ``drain_grace_seconds``) and their WebSocket clients get their ``result``
before a normal close (1001). Then uvicorn shuts down. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from gemma_worker.api.app import create_app, load_keys
from gemma_worker.core.auth import KeyRing
from gemma_worker.core.hosts import is_loopback
from gemma_worker.runtime.lifecycle import Lifecycle
from gemma_worker.runtime.state import WorkerState
from gemma_worker.settings import Settings

log = logging.getLogger(__name__)

#: The kernel send buffer of every connection (see :func:`run_daemon`).
SEND_BUFFER_BYTES = 256 * 1024


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains the worker before shutting down."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace: float) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace = grace
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        """Remember the loop so signal handlers can schedule the drain on it."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain, then exit. Second: uvicorn's immediate exit."""
        if self._drain_task is not None or self._loop is None:
            super().handle_exit(sig, frame)
            return
        log.info("signal received: draining", extra={"signal": sig})
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        finished = await self._lifecycle.drain(self._grace)
        # Give WebSocket handlers a moment to deliver final events and close with 1001.
        for _ in range(100):
            if not self._lifecycle.connections:
                break
            await asyncio.sleep(0.02)
        log.info("drain complete", extra={"all_finished": finished})
        self.should_exit = True


class UnsafeBindError(Exception):
    """The worker would be open to the network without API keys."""


def check_bind(settings: Settings, keys: KeyRing) -> None:
    """Refuse a non-loopback address without API keys unless ``insecure`` is set."""
    if keys.enabled or settings.insecure or is_loopback(settings.host):
        return
    raise UnsafeBindError(
        f"refusing to listen on {settings.host} without API keys: set GEMMA_API_KEYS or "
        "GEMMA_API_KEY_FILE, or pass --insecure (GEMMA_INSECURE=1) to serve anyone who can "
        "reach it"
    )


class TLSConfigError(Exception):
    """The TLS certificate or key cannot be used."""


def check_tls(settings: Settings) -> None:
    """Load the TLS certificate and key once before binding, so a bad pair is one clear line
    rather than a traceback from the server."""
    if settings.ssl_certfile is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.ssl_certfile, settings.ssl_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "unusable"
        raise TLSConfigError(f"cannot load the TLS certificate and key: {reason}") from exc


def server_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for the worker: WebSocket size limit, keepalive pings, TLS."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        log_config=None,
        access_log=False,
        ws_max_size=settings.ws_max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        timeout_graceful_shutdown=5,
    )


def run_daemon(settings: Settings) -> int:
    """Serve until a signal; exit status 0 after a clean drain."""
    check_bind(settings, load_keys(settings))
    check_tls(settings)
    app = create_app(settings)
    state: WorkerState = app.state.worker
    config = server_config(app, settings)
    server = DrainingServer(config, state.lifecycle, settings.drain_grace_seconds)
    listener = config.bind_socket()
    # Accepted connections inherit it. A fixed send buffer instead of the kernel's autotuned
    # one (up to 4 MiB): a client that stops reading is noticed (GEMMA_STREAM_STALL_TIMEOUT)
    # once a quarter MiB waits for it, not megabytes later; ample for token streams.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    server.run(sockets=[listener])
    return 0
