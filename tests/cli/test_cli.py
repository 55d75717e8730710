"""The ``gemma-worker`` command in real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gemma_worker.cli.main import build_parser, settings_from_args
from tests.conftest import spawn_daemon


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemma_worker", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_test_mode_generates_and_prints_figures() -> None:
    proc = run_cli("--mode", "test", "--max-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "time to first token:" in proc.stdout
    assert "tokens/s:" in proc.stdout
    assert "load time:" in proc.stdout
    assert "loading the model" in proc.stderr


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    for mode in ("test", "daemon"):
        proc = run_cli("--mode", mode, "--model", str(missing))
        assert proc.returncode == 2
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines[-1] == f"gemma-worker: error: model file not found: {missing}"
        assert "Traceback" not in proc.stderr


def test_garbage_model_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    proc = run_cli("--mode", "test", "--model", str(bad))
    assert proc.returncode == 2
    assert "not a loadable GGUF model" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_a_bad_models_folder_is_one_clear_line(tmp_path: Path) -> None:
    proc = run_cli("--mode", "daemon", "--models-dir", str(tmp_path / "none"))
    assert proc.returncode == 2
    assert (
        proc.stderr.splitlines()[-1]
        == f"gemma-worker: error: models folder not found: {tmp_path / 'none'}"
    )
    (tmp_path / "models.toml").write_text("[models.x]\nn_ctx = 1\n")
    proc = run_cli("--mode", "daemon", "--models-dir", str(tmp_path))
    assert proc.returncode == 2
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("gemma-worker: error: models.toml: models.x.n_ctx: "), last
    assert "Traceback" not in proc.stderr


def test_invalid_setting_is_one_clear_line() -> None:
    proc = run_cli("--mode", "test", env={"GEMMA_N_CTX": "lots"})
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("gemma-worker: error: invalid setting n_ctx")


def test_flags_override_env_which_overrides_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('port = 4000\nn_ctx = 2048\nlog_level = "DEBUG"\ntop_k = 7\n')
    monkeypatch.setenv("GEMMA_N_CTX", "1536")
    monkeypatch.setenv("GEMMA_PORT", "4001")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    args = build_parser().parse_args(["--config", str(config), "--port", "4002"])
    settings = settings_from_args(args)
    assert settings.port == 4002  # flag
    assert settings.n_ctx == 1536  # env over file
    assert settings.log_level == "WARNING"  # unprefixed env name
    assert settings.top_k == 7  # file over default
    assert settings.host == "127.0.0.1"  # default


def test_allowed_hosts_from_a_flag_env_or_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('allowed_hosts = ["gemma.example", ".lan"]\n')
    args = build_parser().parse_args(["--config", str(config)])
    assert settings_from_args(args).allowed_hosts == ["gemma.example", ".lan"]
    monkeypatch.setenv("GEMMA_ALLOWED_HOSTS", "env.example")
    assert settings_from_args(args).allowed_hosts == ["env.example"]
    args = build_parser().parse_args(["--config", str(config), "--allowed-hosts", "a.test,b.test"])
    assert settings_from_args(args).allowed_hosts == ["a.test", "b.test"]


def test_a_bad_host_pattern_is_one_clear_line() -> None:
    proc = run_cli("--mode", "daemon", "--allowed-hosts", "gemma.example:443")
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith("gemma-worker: error: invalid setting allowed_hosts")
    assert "no port" in line and "\n" not in line


def test_module_and_console_script_agree() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("gemma-worker ")


def test_open_address_without_keys_is_refused() -> None:
    proc = run_cli("--mode", "daemon", "--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "refusing to listen on 0.0.0.0 without API keys" in proc.stderr
    assert "--insecure" in proc.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--insecure",), {}),
        ((), {"GEMMA_API_KEYS": "an-operator-key-0123456789"}),
    ],
)
def test_open_address_with_keys_or_insecure_starts(
    args: tuple[str, ...], env: dict[str, str]
) -> None:
    proc, port = spawn_daemon(env, "--host", "0.0.0.0", *args)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_unusable_key_is_one_line_without_the_key(tmp_path: Path) -> None:
    proc = run_cli("--mode", "daemon", env={"GEMMA_API_KEYS": "tiny-key"})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "at least 16 characters" in proc.stderr
    assert "tiny-key" not in proc.stderr
    missing = tmp_path / "keys.txt"
    proc = run_cli("--mode", "daemon", "--api-key-file", str(missing))
    assert proc.returncode == 2 and "cannot read the API key file" in proc.stderr
