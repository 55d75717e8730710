"""Per-client rate limits: requests and generated tokens per window (the ``limits`` library,
in memory or shared through e.g. Redis) and concurrent generations (leases: in this process,
or across replicas through Redis)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from gemma_worker.cluster.errors import SharedStateError
from gemma_worker.cluster.leases import Hold, LeaseTable, LocalLeases
from gemma_worker.core.errors import ErrorCode, WorkerError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Admission:
    """One generation the rate limiter let in: report its tokens with :meth:`charge`, end it
    with :meth:`end` (its place under the concurrency cap is free everywhere on return) or
    :meth:`release` (soon; also done when it is garbage-collected)."""

    identity: str
    limiter: RateLimiter | None = None
    place: Hold | None = field(default=None, repr=False)

    def charge(self, tokens: int) -> None:
        """Count ``tokens`` generated tokens against the client's token limit."""
        if self.limiter is not None and tokens > 0:
            self.limiter.charge(self.identity, tokens)

    def release(self) -> None:
        """Give the place back soon (idempotent)."""
        if self.place is not None:
            self.place.release()

    async def end(self) -> None:
        """Give the place back now (idempotent)."""
        if self.place is not None:
            await self.place.end()


class RateLimiter:
    """Admits or refuses generation requests per client identity (a key id or an address)."""

    def __init__(
        self,
        *,
        requests: str | None,
        tokens: str | None,
        max_concurrent: int | None,
        storage_uri: str = "memory://",
        leases: LeaseTable | None = None,
    ) -> None:
        """``leases`` holds the running generations (default: this process's own)."""
        self._requests: RateLimitItem | None = parse(requests) if requests else None
        self._tokens: RateLimitItem | None = parse(tokens) if tokens else None
        self._max_concurrent = max_concurrent
        self._windows = MovingWindowRateLimiter(storage_from_string(storage_uri))
        # A shared store (Redis...) is network I/O: its calls run off the event loop.
        self._blocking = not storage_uri.startswith("memory://")
        self._leases: LeaseTable = leases or LocalLeases()

    @property
    def enabled(self) -> bool:
        """Whether any limit is configured."""
        return bool(self._requests or self._tokens or self._max_concurrent)

    async def admit(self, identity: str) -> Admission:
        """Count one request for ``identity``; ``RATE_LIMITED`` (with ``retry_after`` and the
        limit's figures) when a limit is reached."""
        if not self.enabled:
            return Admission(identity)
        place = await self._take_place(identity)
        try:
            if self._blocking:
                await asyncio.to_thread(self._check_windows, identity)
            else:
                self._check_windows(identity)
        except BaseException:
            if place is not None:
                await place.end()
            raise
        return Admission(identity, self, place)

    async def _take_place(self, identity: str) -> Hold | None:
        """A place under the concurrency cap (``None``: no cap, or its store is down)."""
        if not self._max_concurrent:
            return None
        try:
            place = await Hold.take(self._leases, f"running:{identity}", self._max_concurrent)
        except SharedStateError:
            log.exception("lease store failed; request allowed")
            return None
        if place is None:
            raise WorkerError(
                ErrorCode.RATE_LIMITED,
                f"at most {self._max_concurrent} generations may run at once for this client",
                retry_after=1,
                limit=self._max_concurrent,
                remaining=0,
                reset=1,
            )
        return place

    def _check_windows(self, identity: str) -> None:
        if self._tokens is not None:
            self._check(self._tokens, identity, "token", consume=False)
        if self._requests is not None:
            self._check(self._requests, identity, "request", consume=True)

    def _check(self, item: RateLimitItem, identity: str, what: str, *, consume: bool) -> None:
        try:
            allowed = (
                self._windows.hit(item, identity) if consume else self._windows.test(item, identity)
            )
            if allowed:
                return
            stats = self._windows.get_window_stats(item, identity)
        except Exception:  # a storage outage must not stop the service: fail open
            log.exception("rate-limit storage failed; request allowed")
            return
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise WorkerError(
            ErrorCode.RATE_LIMITED,
            f"{what} rate limit reached ({item}); retry in {wait} s",
            retry_after=wait,
            limit=item.amount,
            remaining=0,
            reset=wait,
        )

    def charge(self, identity: str, tokens: int) -> None:
        """Count generated tokens (capped at what is left, so the window is used up and the
        next request is refused until it moves on)."""
        if self._tokens is None:
            return
        if self._blocking:
            asyncio.get_running_loop().run_in_executor(None, self._charge, identity, tokens)
        else:
            self._charge(identity, tokens)

    def _charge(self, identity: str, tokens: int) -> None:
        assert self._tokens is not None
        try:
            left = self._windows.get_window_stats(self._tokens, identity).remaining
            if left > 0:
                self._windows.hit(self._tokens, identity, cost=min(tokens, left))
        except Exception:
            log.exception("rate-limit storage failed; tokens not counted")
