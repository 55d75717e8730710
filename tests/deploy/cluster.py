"""Two real worker processes sharing one real Redis, behind real nginx with the shipped
configuration: the deployment docs/DEPLOY.md describes, on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.programs import Nginx, RedisServer, free_port


@dataclass
class Replica:
    """One ``gemma-worker --mode daemon`` process on a fixed port."""

    name: str
    port: int
    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        with (self.workdir / f"{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gemma_worker",
                    "--mode",
                    "daemon",
                    "--port",
                    str(self.port),
                ],
                env={**os.environ, **self.env, **(extra_env or {})},
                stdout=log,
                stderr=log,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.http}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"replica {self.name} did not become ready: {self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@dataclass
class Cluster:
    """Redis + replicas ``a`` and ``b`` + nginx in front."""

    workdir: Path
    redis: RedisServer
    replicas: list[Replica] = field(default_factory=list)
    nginx: Nginx | None = None

    @classmethod
    def start(cls, workdir: Path, redis: RedisServer, env: dict[str, str]) -> Cluster:
        cluster = cls(workdir, redis)
        prefix = f"cluster-{os.getpid()}-{time.monotonic_ns()}:"
        for name in ("a", "b"):
            data = workdir / name
            data.mkdir(parents=True, exist_ok=True)
            replica_env = {
                "GEMMA_REDIS_URL": redis.url,
                "GEMMA_REDIS_PREFIX": prefix,
                "GEMMA_WORKER_ID": name,
                "GEMMA_DATA_DIR": str(data),
                "GEMMA_N_CTX": "2048",
                "GEMMA_PARALLEL": "2",
                # One core each: two processes with a thread per core each would fight over
                # the cores (llama.cpp's threads spin at their barriers) and crawl.
                "GEMMA_N_THREADS": str(max(1, (os.cpu_count() or 2) // 2)),
                "GEMMA_TEMPERATURE": "0",
                **env,
            }
            cluster.replicas.append(Replica(name, free_port(), workdir, replica_env))
        cluster.restart()
        return cluster

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def other(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name != name)

    def restart(self, extra_env: dict[str, str] | None = None) -> None:
        """(Re)start every replica, in parallel, and wait until both are ready; then nginx,
        on the same port, so it forgets replicas it saw fail (it would avoid them for the
        configured fail_timeout)."""
        for r in self.replicas:
            r.stop()
            r.start(extra_env)
        for r in self.replicas:
            r.wait_ready()
        port = None
        if self.nginx is not None:
            port = self.nginx.port
            self.nginx.stop()
        self.nginx = Nginx.start(self.workdir / "nginx", [r.port for r in self.replicas], port)

    @property
    def http(self) -> str:
        assert self.nginx is not None
        return self.nginx.http

    @property
    def ws(self) -> str:
        assert self.nginx is not None
        return self.nginx.ws

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for r in self.replicas:
            r.stop()
