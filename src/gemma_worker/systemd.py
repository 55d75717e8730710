"""systemd's service notifications (sd_notify(3)): readiness, stopping and watchdog pings.

The protocol is a datagram of ``KEY=VALUE`` lines to the Unix socket named by
``$NOTIFY_SOCKET`` (an abstract socket when it starts with ``@``). Without that variable (not
run by systemd with ``Type=notify``), every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to systemd; a no-op outside a ``Type=notify`` service."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self._address = socket_path
        if socket_path is not None and socket_path.startswith("@"):
            self._address = "\0" + socket_path[1:]
        self._watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier systemd's environment describes (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
        ``WATCHDOG_PID``)."""
        env = os.environ if env is None else env
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (pid is None or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"]) or None
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half systemd's ``WatchdogSec``), or ``None``."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (e.g. ``"READY=1"``); whether it went out."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("systemd notification failed: %s", exc)
            return False
        return True

    async def watchdog(self, alive: Callable[[], bool]) -> None:
        """Ping systemd's watchdog while ``alive()`` holds, until cancelled. When it stops
        holding (the engine thread died), the pings stop and systemd restarts the service."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            if alive():
                self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
