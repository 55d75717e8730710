"""The Host check behind the shipped nginx site (which passes ``Host $http_host`` on), with
the worker's list set to its public name, as docs/DEPLOY.md says: that name is served on
every route family, any other is refused in the route's dialect, the WebSocket too."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningWorker, make_settings, start_worker
from tests.hostcheck import (
    FOREIGN,
    PROBES,
    Probe,
    assert_handshake_refused,
    handshake,
)
from tests.programs import Nginx

PUBLIC = "gemma.test"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningWorker, Nginx]]:
    worker = start_worker(make_settings(parallel=2, allowed_hosts=[PUBLIC]), wait_ready=False)
    nginx = Nginx.start(tmp_path_factory.mktemp("nginx-hosts"), [worker.settings.port])
    try:
        deadline = time.monotonic() + 60
        while True:  # ready, as nginx sees it (the worker itself answers only its name)
            r = httpx.get(f"{nginx.http}/ready", headers={"Host": PUBLIC}, timeout=5)
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        yield worker, nginx
    finally:
        nginx.stop()
        worker.stop()


def name(nginx: Nginx) -> str:
    return f"{PUBLIC}:{nginx.port}"


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: f"{p.method} {p.path}")
def test_the_public_name_is_served_through_nginx(
    proxied: tuple[RunningWorker, Nginx], probe: Probe
) -> None:
    _, nginx = proxied
    probe.assert_served(probe.send(nginx.http, name(nginx)))


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: f"{p.method} {p.path}")
def test_another_name_is_refused_through_nginx(
    proxied: tuple[RunningWorker, Nginx], probe: Probe
) -> None:
    _, nginx = proxied
    probe.assert_refused(probe.send(nginx.http, f"{FOREIGN}:{nginx.port}"))


def test_loopback_names_are_refused_once_a_list_is_set(
    proxied: tuple[RunningWorker, Nginx],
) -> None:
    worker, nginx = proxied
    execute = PROBES[0]
    for host in (f"127.0.0.1:{nginx.port}", f"localhost:{nginx.port}"):
        execute.assert_refused(execute.send(nginx.http, host))
    # straight to the worker as well: the list replaces the defaults
    execute.assert_refused(execute.send(worker.http, f"127.0.0.1:{worker.settings.port}"))


def test_the_websocket_through_nginx(proxied: tuple[RunningWorker, Nginx]) -> None:
    _, nginx = proxied
    status, headers, _ = handshake(nginx.port, name(nginx), origin=f"http://{name(nginx)}")
    assert status == 101 and headers["upgrade"].lower() == "websocket"
    assert_handshake_refused(*handshake(nginx.port, FOREIGN, origin=f"http://{FOREIGN}"))
    assert_handshake_refused(*handshake(nginx.port, f"localhost:{nginx.port}"))


def test_nginx_logged_no_error(proxied: tuple[RunningWorker, Nginx]) -> None:
    _, nginx = proxied
    assert "[error]" not in nginx.error_log()
