"""The models a worker can serve: the default one (the embedded Gemma 3 270M, or
``model_path``) and, with ``models_dir``, every ``*.gguf`` directly in that folder, named by
its file stem, with per-model settings from ``models.toml`` beside them.

A client's name is resolved among the models found (:mod:`gemma_worker.core.model_names`);
it never becomes a path. A file is a model only if it lies in the folder itself: a symlink
that leads out of it, a subfolder, a hidden file or a stem that is not a plain name is left out.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.keep_alive import parse_keep_alive
from gemma_worker.core.model_names import is_model_id, is_model_name, resolve, shown
from gemma_worker.core.sampling import RequestLimits
from gemma_worker.engine.config import EngineConfig
from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.settings import Settings

log = logging.getLogger(__name__)

#: The per-model settings file, in the models folder.
MODELS_TOML = "models.toml"
#: The embedded model's id (its file's stem) and the names it also answers to.
EMBEDDED_ID = "gemma-3-270m-q4_k_m"
EMBEDDED_ALIASES = ("gemma3:270m", "gemma-3-270m")


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

    @property
    def aliases(self) -> tuple[str, ...]:
        """The other names it answers to."""
        extra = EMBEDDED_ALIASES if self.path is None else ()
        return tuple(dict.fromkeys([*self.settings.aliases, *extra]))

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
    ) -> None:
        self.folder = folder
        self._configs = configs or {}
        self._default = dataclasses.replace(
            default, settings=self._configs.get(default.id, default.settings)
        )
        self._stamp: int | None = None
        self._specs: dict[str, ModelSpec] = {default.id: self._default}
        self._aliases: dict[str, str] = {}
        self._rescan(force=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry the settings describe; :class:`ModelsConfigError` if unusable."""
        path = settings.model_path
        default = ModelSpec(EMBEDDED_ID if path is None else path.stem, path, default=True)
        folder = settings.models_dir
        configs = {} if folder is None else read_models_toml(folder / MODELS_TOML)
        return cls(default, folder, configs)

    @property
    def default(self) -> ModelSpec:
        """The model a request naming none gets."""
        return self._default

    def specs(self) -> list[ModelSpec]:
        """Every model: the default first, then the folder's by id."""
        self._rescan()
        rest = sorted((s for s in self._specs.values() if not s.default), key=lambda s: s.id)
        return [self._default, *rest]

    def get(self, model_id: str) -> ModelSpec | None:
        """The model with this exact id."""
        self._rescan()
        return self._specs.get(model_id)

    def resolve(self, name: str | None) -> ModelSpec:
        """The model ``name`` means; ``MODEL_NOT_FOUND`` when none does."""
        if name is None or name == "" or self.folder is None:
            return self._default
        self._rescan()
        found = resolve(name, frozenset(self._specs), self._aliases)
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
            return
        try:
            # A file added, removed or renamed changes the folder's mtime: one stat tells.
            stamp: int | None = os.stat(self.folder).st_mtime_ns
        except OSError:
            stamp = None
        if not force and stamp == self._stamp and stamp is not None:
            return
        self._stamp = stamp
        found: dict[str, ModelSpec] = {self._default.id: self._default}
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
            found[stem] = ModelSpec(stem, path, settings=self._configs.get(stem, ModelSettings()))
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
