"""``gemma-worker --mode test|interactive|daemon``: CLI flags override env and config file."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

from pydantic import ValidationError

from gemma_worker import __version__
from gemma_worker.cli.daemon import TLSConfigError, UnsafeBindError
from gemma_worker.core.auth import KeyConfigError
from gemma_worker.engine.llama import ModelLoadError
from gemma_worker.logging_setup import configure_logging
from gemma_worker.runtime.registry import ModelRegistry, ModelsConfigError
from gemma_worker.settings import Settings, load_settings

#: CLI flag -> settings field, for flags that map one to one.
_FLAG_FIELDS = {
    "host": "host",
    "port": "port",
    "model": "model_path",
    "models_dir": "models_dir",
    "n_ctx": "n_ctx",
    "threads": "n_threads",
    "gpu_layers": "n_gpu_layers",
    "parallel": "parallel",
    "max_queue": "max_queue",
    "log_level": "log_level",
    "log_format": "log_format",
    "insecure": "insecure",
    "api_key_file": "api_key_file",
    "allowed_hosts": "allowed_hosts",
    "ssl_certfile": "ssl_certfile",
    "ssl_keyfile": "ssl_keyfile",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(
        prog="gemma-worker",
        description="FazAI Gemma Worker: local Gemma inference over WebSocket and REST.",
    )
    p.add_argument(
        "--mode",
        choices=["test", "interactive", "daemon"],
        default="daemon",
        help="test: one generation and figures; interactive: terminal chat; daemon: serve",
    )
    p.add_argument("--config", type=Path, help="TOML config file (keys = settings fields)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 3125)")
    p.add_argument("--model", type=Path, help="GGUF model file (default: embedded Gemma 3 270M)")
    p.add_argument(
        "--models-dir", type=Path, help="folder of GGUF models, loaded when a request names one"
    )
    p.add_argument("--n-ctx", type=int, help="context tokens per slot")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--gpu-layers", type=int, help="layers to offload to a GPU")
    p.add_argument("--parallel", type=int, help="parallel slots")
    p.add_argument("--max-queue", type=int, help="requests that may wait for a slot")
    p.add_argument(
        "--api-key-file", type=Path, help="file of API keys (one key or sha256:<hex> per line)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --host without API keys (anyone who can reach it may use it)",
    )
    p.add_argument(
        "--allowed-hosts",
        help="host names to answer, comma-separated (default: loopback names without keys)",
    )
    p.add_argument("--ssl-certfile", type=Path, help="TLS certificate (PEM): serve https/wss")
    p.add_argument("--ssl-keyfile", type=Path, help="TLS private key (PEM) of --ssl-certfile")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--prompt", help="test mode: the prompt to complete")
    p.add_argument("--max-tokens", type=int, default=16, help="test mode: tokens to generate")
    p.add_argument("--version", action="version", version=f"gemma-worker {__version__}")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings with the given flags applied over env and the config file."""
    overrides = {field: getattr(args, flag) for flag, field in _FLAG_FIELDS.items()}
    return load_settings(args.config, **overrides)


def _fail(message: str) -> int:
    print(f"gemma-worker: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.config is not None and not args.config.is_file():
        return _fail(f"config file not found: {args.config}")
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _fail(f"invalid setting {where}: {first['msg']}")
    except (OSError, ValueError) as exc:
        return _fail(f"could not read settings: {exc}")
    level = settings.log_level
    if args.mode != "daemon" and args.log_level is None:
        level = "WARNING"  # the terminal modes print their own output; logs would interleave
    configure_logging(level, settings.log_format)
    try:
        if args.mode == "test":
            from gemma_worker.cli.test_mode import DEFAULT_PROMPT, run_test  # noqa: PLC0415

            return asyncio.run(run_test(settings, args.prompt or DEFAULT_PROMPT, args.max_tokens))
        if args.mode == "interactive":
            from gemma_worker.cli.interactive import run_interactive  # noqa: PLC0415

            return asyncio.run(run_interactive(settings))
        from gemma_worker.cli.daemon import run_daemon  # noqa: PLC0415
        from gemma_worker.engine.model_files import resolve_model_path  # noqa: PLC0415

        resolve_model_path(settings.model_path)  # a missing model is one line, before binding
        if settings.models_dir is not None and not settings.models_dir.is_dir():
            return _fail(f"models folder not found: {settings.models_dir}")
        ModelRegistry.from_settings(settings)  # a bad models.toml too
        return run_daemon(settings)
    except (
        ModelLoadError,
        KeyConfigError,
        UnsafeBindError,
        TLSConfigError,
        ModelsConfigError,
    ) as exc:
        return _fail(str(exc))
    except sqlite3.Error as exc:
        return _fail(f"cannot open the session database {settings.session_db_path}: {exc}")
    except PermissionError as exc:
        return _fail(f"cannot use {exc.filename}: {exc.strerror}")
    except KeyboardInterrupt:
        return 130
