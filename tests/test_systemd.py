"""sd_notify on a real datagram socket, as systemd listens for it."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from gemma_worker.systemd import SystemdNotifier


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert not notifier.notify("READY=1")
    assert notifier.watchdog_interval is None


def test_the_watchdog_is_for_this_process_only() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000"}
    assert SystemdNotifier.from_env(env).watchdog_interval == 2.0
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier.from_env(other).watchdog_interval is None


def test_pings_stop_when_the_engine_is_not_alive(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.setblocking(False)
        notifier = SystemdNotifier(str(path), watchdog_usec=100_000)  # a ping every 50 ms
        alive = [True]

        async def run() -> None:
            task = asyncio.create_task(notifier.watchdog(lambda: alive[0]))
            await asyncio.sleep(0.3)
            alive[0] = False
            await asyncio.sleep(0.05)
            drain()
            await asyncio.sleep(0.3)
            task.cancel()

        received: list[bytes] = []

        def drain() -> None:
            while True:
                try:
                    received.append(listener.recv(100))
                except BlockingIOError:
                    return

        asyncio.run(run())
        assert received.count(b"WATCHDOG=1") >= 3
        before = len(received)
        drain()
        assert len(received) == before, "pinged while the engine was down"


def test_abstract_socket_names(tmp_path: Path) -> None:
    name = f"gemma-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(5)
        assert SystemdNotifier("@" + name).notify("READY=1", "STATUS=ready")
        assert listener.recv(100) == b"READY=1\nSTATUS=ready"
