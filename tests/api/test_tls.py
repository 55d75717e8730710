"""TLS served by the worker itself (``--ssl-certfile``/``--ssl-keyfile``): HTTPS with the
``openai`` SDK and ``wss://`` with ``websockets``, both verifying a self-signed certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.api.wsclient import connect, run_request
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker
from tests.programs import free_port


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    cert_file, key_file = self_signed(tmp_path_factory.mktemp("tls"))
    trust = ssl.create_default_context(cafile=str(cert_file))
    w = start_worker(
        make_settings(parallel=2, ssl_certfile=cert_file, ssl_keyfile=key_file), verify=trust
    )
    yield w
    w.stop()


def test_https_with_the_openai_sdk(tls_worker: RunningWorker) -> None:
    assert tls_worker.http.startswith("https://")
    with (
        httpx.Client(verify=tls_worker.verify or False) as http,
        openai.OpenAI(base_url=f"{tls_worker.http}/v1", api_key="unused", http_client=http) as c,
    ):
        out = c.completions.create(model="gemma", prompt=PARIS_PROMPT, max_tokens=3)
    assert "Paris" in (out.choices[0].text or "")


async def test_wss_with_websockets(tls_worker: RunningWorker) -> None:
    assert tls_worker.ws.startswith("wss://")
    async with connect(tls_worker.ws, ssl=tls_worker.verify) as ws:
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 3})
    assert events[-1]["type"] == "result" and "Paris" in events[-1]["content"]


def test_an_unverified_certificate_is_refused_by_clients(tls_worker: RunningWorker) -> None:
    # The default trust store does not know the self-signed certificate: TLS is real.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_worker.http}/health", timeout=5)


def test_plain_http_on_the_tls_port_gets_no_answer(tls_worker: RunningWorker) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_worker.settings.port}/health", timeout=5)


def test_a_key_without_a_certificate_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ssl_keyfile needs ssl_certfile"):
        make_settings(ssl_keyfile=tmp_path / "key.pem")


def test_the_daemon_says_in_one_line_that_the_certificate_is_unusable(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    for args in (["--ssl-certfile", str(tmp_path / "missing.pem")], ["--ssl-certfile", str(bad)]):
        command = [sys.executable, "-m", "gemma_worker", "--mode", "daemon"]
        done = subprocess.run(
            [*command, "--port", str(free_port()), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot load the TLS certificate and key" in lines[0], lines
