"""The models a worker can serve: the default one (the embedded Gemma 3 270M, or
``model_path``), the built-in embedding model (all-MiniLM-L6-v2, converted into the cache on
first use) and, with ``models_dir``, every ``*.gguf`` directly in that folder, named by its
file stem, with per-model settings from ``models.toml`` beside them.

A client's name is resolved among the models found (:mod:`gemma_worker.core.model_names`);
it never becomes a path. A file is a model only if it lies in the folder itself: a symlink
that leads out of it, a subfolder, a hidden file or a stem that is not a plain name is left out.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.keep_alive import parse_keep_alive
from gemma_worker.core.model_names import is_model_id, is_model_name, resolve, shown
from gemma_worker.core.sampling import RequestLimits
from gemma_worker.engine.compute_gate import ComputeGate
from gemma_worker.engine.config import EngineConfig
from gemma_worker.engine.embedding_engine import EmbeddingConfig
from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.llama_embed import Pooling
from gemma_worker.engine.minilm import MINILM_ID, minilm_available, minilm_path
from gemma_worker.engine.model_files import resolve_model_path
from gemma_worker.settings import Settings

log = logging.getLogger(__name__)

#: The per-model settings file, in the models folder.
MODELS_TOML = "models.toml"
#: The embedded model's id (its file's stem) and the names it also answers to.
EMBEDDED_ID = "gemma-3-270m-q4_k_m"
EMBEDDED_ALIASES = ("gemma3:270m", "gemma-3-270m")
#: The built-in embedding model's other names (Ollama calls it ``all-minilm``).
MINILM_ALIASES = ("all-minilm", "all-minilm:22m", "all-minilm:l6-v2", "all-minilm-l6-v2-f16")


class ModelKind(StrEnum):
    """What a model does: generate text (it may also embed, pooled), or only embed."""

    GENERATE = "generate"
    EMBED = "embed"


class ModelsConfigError(ValueError):
    """``models.toml`` is unusable (the message says where)."""


class ModelSettings(BaseModel):
    """One model's entry in ``models.toml`` (``[models."<id>"]``); unset fields are the
    worker's settings."""

    model_config = ConfigDict(extra="forbid")

    aliases: list[str] = Field(default_factory=list, description="Other names for the model.")
    n_ctx: int | None = Field(default=None, ge=64, le=1_048_576, description="Context per slot.")
    parallel: int | None = Field(default=None, ge=1, le=64, description="Slots.")
    deterministic: bool | None = Field(
        default=None,
        description="Kernel mode of this model. The two process-wide choices "
        "(sgemm_single_rows, tiled_matmul) stay the worker's.",
    )
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    default_max_tokens: int | None = Field(default=None, ge=1)
    chat_template: str | None = Field(
        default=None, description="A Jinja chat template used instead of the GGUF's."
    )
    keep_alive: str | float | None = Field(
        default=None, description="How long the model stays loaded after a request."
    )
    embedding: bool | None = Field(
        default=None,
        description="Whether the model only embeds (an embedding model such as BERT or "
        "EmbeddingGemma: it serves /v1/embeddings, not generation). Default: false, except "
        "for the built-in all-MiniLM-L6-v2.",
    )
    pooling: Literal["mean", "cls", "last"] | None = Field(
        default=None,
        description="How an input's token states become its vector when the model embeds. "
        "Default: the GGUF's pooling type; for a generative model without one, mean.",
    )

    @field_validator("aliases")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not is_model_name(alias):
                raise ValueError(f"alias {alias!r} is not a plain model name")
        return value

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_keep_alive(value)
        return value


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the worker can load: ``path`` is its file (``None``: the embedded model,
    assembled when first loaded); ``default`` serves requests that name no model."""

    id: str
    path: Path | None
    default: bool = False
    settings: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    kind: ModelKind = ModelKind.GENERATE
    #: A built-in model's names besides its id.
    builtin_aliases: tuple[str, ...] = ()
    #: Makes a built-in model's file (blocking; cached after the first time).
    make: Callable[[], Path] | None = None

    @property
    def aliases(self) -> tuple[str, ...]:
        """The other names it answers to."""
        return tuple(dict.fromkeys([*self.settings.aliases, *self.builtin_aliases]))

    @property
    def embeds_only(self) -> bool:
        """Whether the model serves embeddings and no generation."""
        return self.kind is ModelKind.EMBED

    @property
    def pooling(self) -> Pooling | None:
        """The pooling its embeddings use (``None``: the GGUF's own; mean for a generative
        model, which the engine applies when the file names none)."""
        chosen = self.settings.pooling
        return Pooling(chosen) if chosen is not None else None

    def locate(self) -> Path:
        """The model's file, made first for a built-in one (blocking);
        :class:`ModelLoadError` if it cannot be had."""
        if self.make is not None:
            return self.make()
        return resolve_model_path(self.path)

    def keep_alive(self, worker_default: float) -> float:
        """Seconds it stays loaded after a request that does not say."""
        if self.settings.keep_alive is None:
            return worker_default
        return parse_keep_alive(self.settings.keep_alive)


def read_models_toml(path: Path) -> dict[str, ModelSettings]:
    """Per-model settings from ``path`` (none when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ModelsConfigError(f"{MODELS_TOML}: cannot be read ({exc.strerror})") from exc
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelsConfigError(f"{MODELS_TOML}: {exc}") from exc
    unknown = set(data) - {"models"}
    if unknown:
        raise ModelsConfigError(f"{MODELS_TOML}: unknown table(s) {sorted(unknown)}")
    entries = data.get("models", {})
    if not isinstance(entries, dict):
        raise ModelsConfigError(f"{MODELS_TOML}: [models] must be a table")
    out: dict[str, ModelSettings] = {}
    for name, entry in entries.items():
        if not is_model_id(name):
            raise ModelsConfigError(f"{MODELS_TOML}: {name!r} is not a model id (a file stem)")
        try:
            out[name] = ModelSettings.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ModelsConfigError(
                f"{MODELS_TOML}: models.{name}.{where}: {first['msg']}"
            ) from exc
    return out


class ModelRegistry:
    """Which models exist and what each name means. Without a folder the one model serves
    every name (as llama-server does outside router mode)."""

    def __init__(
        self,
        default: ModelSpec,
        folder: Path | None = None,
        configs: dict[str, ModelSettings] | None = None,
        builtins: list[ModelSpec] | None = None,
    ) -> None:
        """``builtins``: models that are always there beside the default (the embedding
        model), unless a file of the folder has the same id."""
        self.folder = folder
        self._configs = configs or {}
        self._default = self._configured(default)
        self._builtins = [self._configured(b) for b in builtins or () if b.id != self._default.id]
        self._stamp: int | None = None
        self._specs: dict[str, ModelSpec] = self._fixed()
        self._aliases: dict[str, str] = {}
        self._rescan(force=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry the settings describe; :class:`ModelsConfigError` if unusable."""
        path = settings.model_path
        default = ModelSpec(
            EMBEDDED_ID if path is None else path.stem,
            path,
            default=True,
            builtin_aliases=EMBEDDED_ALIASES if path is None else (),
        )
        folder = settings.models_dir
        configs = {} if folder is None else read_models_toml(folder / MODELS_TOML)
        builtins = [] if not minilm_available() else [minilm_spec()]
        return cls(default, folder, configs, builtins)

    def _configured(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` with its ``models.toml`` settings (its kind as they say)."""
        own = self._configs.get(spec.id, spec.settings)
        kind = spec.kind
        if own.embedding is not None:
            kind = ModelKind.EMBED if own.embedding else ModelKind.GENERATE
        return dataclasses.replace(spec, settings=own, kind=kind)

    def _fixed(self) -> dict[str, ModelSpec]:
        """The models that are there without a folder: the default and the built-ins."""
        return {self._default.id: self._default, **{b.id: b for b in self._builtins}}

    @property
    def default(self) -> ModelSpec:
        """The model a request naming none gets."""
        return self._default

    @property
    def default_embedding(self) -> ModelSpec | None:
        """The model an embedding request naming none (or, without a folder, naming an
        unknown model, as OpenAI clients do) gets: the built-in embedding model, else the
        first embedding model of the folder, else the default model (pooled)."""
        self._rescan()
        for spec in self._builtins:
            if spec.embeds_only:
                return spec
        found = sorted((s for s in self._specs.values() if s.embeds_only), key=lambda s: s.id)
        return found[0] if found else self._default

    def specs(self) -> list[ModelSpec]:
        """Every model: the default first, then the built-ins, then the folder's by id."""
        self._rescan()
        fixed = self._fixed()
        rest = sorted((s for s in self._specs.values() if s.id not in fixed), key=lambda s: s.id)
        return [*fixed.values(), *rest]

    def get(self, model_id: str) -> ModelSpec | None:
        """The model with this exact id."""
        self._rescan()
        return self._specs.get(model_id)

    def resolve_embedding(self, name: str | None) -> ModelSpec:
        """The model an embedding request for ``name`` runs on (see
        :attr:`default_embedding`); ``MODEL_NOT_FOUND`` when none is meant."""
        fallback = self.default_embedding or self._default
        if name is None or name == "":
            return fallback
        self._rescan()
        found = resolve(name, frozenset(self._specs), self._aliases)
        if found is not None:
            return self._specs[found]
        if self.folder is None:
            return fallback
        raise WorkerError(
            ErrorCode.MODEL_NOT_FOUND, f"model '{shown(name)}' not found", param="model"
        )

    def resolve(self, name: str | None) -> ModelSpec:
        """The model ``name`` means; ``MODEL_NOT_FOUND`` when none does. Without a folder,
        a name that is none of the worker's models means the default one (as llama-server
        outside router mode: clients send names of their own)."""
        if name is None or name == "":
            return self._default
        self._rescan()
        found = resolve(name, frozenset(self._specs), self._aliases)
        if found is None and self.folder is None:
            return self._default
        if found is None:
            raise WorkerError(
                ErrorCode.MODEL_NOT_FOUND,
                f"model '{shown(name)}' not found",
                param="model",
            )
        return self._specs[found]

    def check_file(self, spec: ModelSpec) -> None:
        """Just before loading: the file is still a regular file inside the folder (it may
        have been swapped for a symlink since it was listed); ``MODEL_NOT_FOUND`` if not."""
        if spec.path is None or spec.default or self.folder is None:
            return
        if _inside(spec.path, self.folder) is None:
            raise WorkerError(
                ErrorCode.MODEL_NOT_FOUND, f"model '{spec.id}' not found", param="model"
            )

    def _rescan(self, force: bool = False) -> None:
        if self.folder is None:
            if force:
                self._aliases = self._alias_table(self._specs)
            return
        try:
            # A file added, removed or renamed changes the folder's mtime: one stat tells.
            stamp: int | None = os.stat(self.folder).st_mtime_ns
        except OSError:
            stamp = None
        if not force and stamp == self._stamp and stamp is not None:
            return
        self._stamp = stamp
        found = self._fixed()
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.warning("cannot list the models folder: %s", exc.strerror)
            entries = []
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            if not dot or ext != "gguf" or not is_model_id(stem) or stem in found:
                continue
            path = _inside(Path(entry.path), self.folder)
            if path is None:
                continue
            found[stem] = self._configured(ModelSpec(stem, path))
        self._specs = found
        self._aliases = self._alias_table(found)

    @staticmethod
    def _alias_table(specs: dict[str, ModelSpec]) -> dict[str, str]:
        table: dict[str, str] = {}
        for spec in specs.values():
            for alias in spec.aliases:
                if alias in specs or table.get(alias, spec.id) != spec.id:
                    log.warning("alias %r is ambiguous: ignored for model %s", alias, spec.id)
                    continue
                table[alias] = spec.id
        return table


def minilm_spec() -> ModelSpec:
    """The built-in embedding model: sentence-transformers' all-MiniLM-L6-v2 (384
    dimensions, mean pooling), converted from its PyPI package on first use."""
    return ModelSpec(
        MINILM_ID,
        None,
        kind=ModelKind.EMBED,
        builtin_aliases=MINILM_ALIASES,
        make=minilm_path,
    )


def _inside(path: Path, folder: Path) -> Path | None:
    """``path`` if it is a regular file whose real location is directly in ``folder``."""
    try:
        real = path.resolve(strict=True)
        home = folder.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if real.parent != home or not real.is_file():
        return None
    return path


def engine_config(settings: Settings, spec: ModelSpec) -> EngineConfig:
    """The engine's settings for ``spec``: the worker's, with the model's own applied."""
    own = spec.settings
    base = settings.engine_config()
    kernels = base.kernels
    if own.deterministic is not None:
        mode = KernelChoices.for_mode(own.deterministic)
        # ggml reads these two once per process: every model runs with the worker's.
        kernels = dataclasses.replace(
            mode,
            sgemm_single_rows=kernels.sgemm_single_rows,
            tiled_matmul=kernels.tiled_matmul,
        )
    kv_dir = base.kv_dir
    if kv_dir is not None and not spec.default:
        kv_dir = kv_dir.parent / "kv-models" / spec.id
    return dataclasses.replace(
        base,
        model_path=spec.path,
        n_ctx=own.n_ctx or base.n_ctx,
        parallel=own.parallel or base.parallel,
        kernels=kernels,
        kv_dir=kv_dir,
        chat_template=own.chat_template,
    )


def embedding_config(settings: Settings, spec: ModelSpec, gate: ComputeGate) -> EmbeddingConfig:
    """The embedding engine's settings for ``spec`` (its kernel mode as for generation; a
    generative model pooled by mean unless ``models.toml`` says otherwise)."""
    base = engine_config(settings, spec)
    pooling = spec.pooling
    if pooling is None and not spec.embeds_only:
        pooling = Pooling.MEAN
    return EmbeddingConfig(
        name=spec.id,
        locate=spec.locate,
        pooling=pooling,
        max_input_tokens=min(
            spec.settings.n_ctx or settings.embedding_max_input_tokens,
            settings.embedding_max_input_tokens,
        ),
        batch_tokens=settings.embedding_batch_tokens,
        max_pending=base.parallel + base.max_queue,
        n_threads=base.n_threads,
        n_gpu_layers=base.n_gpu_layers,
        kernels=base.kernels,
        gate=gate,
        gap_factor=settings.prefill_gap_factor,
    )


def request_limits(settings: Settings, spec: ModelSpec) -> RequestLimits:
    """The defaults and limits requests to ``spec`` are checked against."""
    own = spec.settings
    base = settings.request_limits()
    return dataclasses.replace(
        base,
        temperature=base.temperature if own.temperature is None else own.temperature,
        top_p=own.top_p or base.top_p,
        top_k=base.top_k if own.top_k is None else own.top_k,
        default_max_tokens=min(
            own.default_max_tokens or base.default_max_tokens, base.max_tokens_cap
        ),
    )
