"""Real programs the deploy tests run: redis-server and nginx from the OS packages, each on a
free loopback port in a temp dir. ``scripts/test-deps.sh`` installs them when missing."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "gemma-worker.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def program(name: str) -> str:
    """The path of ``name``, installing the test programs first when it is missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        subprocess.run([str(ROOT / "scripts" / "test-deps.sh")], check=False)
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{name} is not installed and scripts/test-deps.sh could not install it")
    return found


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


@dataclass
class RedisServer:
    """``redis-server`` without persistence on a free port."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path) -> RedisServer:
        port = free_port()
        proc = subprocess.Popen(
            [
                program("redis-server"),
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(port, proc, "redis-server")
        return cls(port, proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@dataclass
class Nginx:
    """nginx running the shipped ``deploy/nginx/gemma-worker.conf`` with the given upstream
    ports and listen port filled in."""

    port: int
    proc: subprocess.Popen[bytes]
    prefix: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @staticmethod
    def site_config(upstreams: list[int], listen: int, sub_path: str = "/") -> str:
        """The shipped site file, its replica addresses and listen port replaced; with a
        ``sub_path`` (``/gemma/``) the worker is served under it, the prefix stripped."""
        text = NGINX_CONF.read_text()
        lines = re.findall(r"(?m)^    server 127\.0\.0\.1:\d+[^\n]*\n", text)
        if not lines:
            raise AssertionError("no upstream server lines in the shipped nginx config")
        params = lines[0].split(None, 2)[2] if len(lines[0].split()) > 2 else ";\n"
        servers = "".join(f"    server 127.0.0.1:{p} {params}" for p in upstreams)
        text = text.replace("".join(lines), servers, 1)
        if servers not in text:
            raise AssertionError("the upstream server lines are not one block")
        text, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", text)
        if n != 1:
            raise AssertionError("no 'listen 80;' in the shipped nginx config")
        if sub_path != "/":
            text, n = re.subn(r"location / \{", f"location {sub_path} {{", text)
            text, m = re.subn(r"proxy_pass http://(\w+);", r"proxy_pass http://\1/;", text)
            if n != 1 or m != 1:
                raise AssertionError("the shipped nginx config has no single 'location /'")
        return text

    @classmethod
    def start(
        cls, workdir: Path, upstreams: list[int], port: int | None = None, sub_path: str = "/"
    ) -> Nginx:
        port = port or free_port()
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        (workdir / "site.conf").write_text(cls.site_config(upstreams, port, sub_path))
        main = f"""
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log warn;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log {workdir}/logs/access.log;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {workdir}/site.conf;
}}
"""
        (workdir / "nginx.conf").write_text(main)
        nginx = program("nginx")
        check = subprocess.run(
            [nginx, "-t", "-p", str(workdir), "-c", str(workdir / "nginx.conf")],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise AssertionError(f"nginx -t failed:\n{check.stderr}")
        proc = subprocess.Popen(
            [nginx, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(port, proc, "nginx")
        return cls(port, proc, workdir)

    def error_log(self) -> str:
        return (self.prefix / "logs" / "error.log").read_text()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
