"""The shipped systemd unit: systemd-analyze accepts it, its example environment file starts
a real worker, and the worker speaks sd_notify (READY, WATCHDOG, STOPPING) as the unit's
Type=notify and WatchdogSec expect."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gemma_worker.settings import Settings
from tests.programs import ROOT, free_port, program

UNIT = ROOT / "deploy" / "systemd" / "gemma-worker.service"
ENV_FILE = ROOT / "deploy" / "systemd" / "gemma-worker.env"


def unit_settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def env_file() -> dict[str, str]:
    values = {}
    for raw in ENV_FILE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value
    return values


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = program("systemd-analyze")
    exe = shutil.which("gemma-worker", path=str(Path(sys.executable).parent))
    assert exe is not None
    text = UNIT.read_text().replace("/opt/gemma-worker/.venv/bin/gemma-worker", exe)
    assert exe in text
    unit = tmp_path / "gemma-worker.service"
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "gemma-worker.service" not in result.stderr, result.stderr  # no warnings about it


def test_the_unit_is_hardened_and_waits_for_the_drain() -> None:
    unit = unit_settings()
    for key, value in {
        "Type": "notify",
        "DynamicUser": "yes",
        "StateDirectory": "gemma-worker",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit.get(key) == [value], key
    assert set(unit["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    defaults = Settings()
    assert int(unit["LimitNOFILE"][0]) > defaults.max_connections * 2
    grace = float(env_file()["GEMMA_DRAIN_GRACE_SECONDS"])
    assert float(unit["TimeoutStopSec"][0]) > grace + 10
    assert int(unit["WatchdogSec"][0]) >= 10


def test_the_example_environment_starts_a_worker_that_notifies_systemd(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    port = free_port()
    env = {
        **os.environ,
        **env_file(),
        "GEMMA_PORT": str(port),
        "GEMMA_DATA_DIR": str(tmp_path / "data"),
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "1000000",  # WatchdogSec=1: a ping every half second
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_worker", "--mode", "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        messages: list[str] = []

        def wait_for(field: str) -> None:
            while field not in messages:
                messages.extend(listener.recv(4096).decode().splitlines())

        wait_for("READY=1")
        # READY comes once the model is loaded: the worker answers at once
        r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert r.status_code == 200
        assert r.json()["slots"] == int(env_file()["GEMMA_PARALLEL"])
        t0 = time.monotonic()
        pings = messages.count("WATCHDOG=1")
        while messages.count("WATCHDOG=1") < pings + 3:
            messages.extend(listener.recv(4096).decode().splitlines())
        assert time.monotonic() - t0 < 3.0
        proc.send_signal(signal.SIGTERM)
        wait_for("STOPPING=1")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
