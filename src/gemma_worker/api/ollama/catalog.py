"""The loaded model as Ollama describes models: ``/api/tags``, ``/api/show`` and ``/api/ps``."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gemma_worker.engine.llama import ModelInfo
from gemma_worker.runtime.state import WorkerState

#: ``expires_at`` of a model that stays loaded (Ollama's ``keep_alive: -1`` shows a far date).
NEVER = "2318-11-26T00:00:00Z"


def parameter_size(n_params: int) -> str:
    """Ollama's spelling of a parameter count: ``268.10M``, ``3.2B``."""
    return f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.2f}M"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ModelCatalog:
    """What Ollama's listing routes say about the one loaded model. The file's sha256 is
    computed once, off the event loop, when first asked for."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._digest: asyncio.Task[str] | None = None

    @property
    def path(self) -> Path | None:
        identity = self.state.engine.identity
        return identity.path if identity is not None else None

    @property
    def name(self) -> str:
        """The model's name in answers: its file name without ``.gguf``, tagged ``latest``."""
        identity = self.state.engine.identity
        return f"{identity.id if identity is not None else 'unknown'}:latest"

    async def digest(self) -> str:
        """The sha256 of the model file (hex)."""
        path = self.path
        if path is None:
            return hashlib.sha256(self.name.encode()).hexdigest()
        if self._digest is None:
            self._digest = asyncio.ensure_future(asyncio.to_thread(_sha256, path))
        try:
            return await asyncio.shield(self._digest)
        except OSError:
            self._digest = None  # try again next time
            raise

    def _modified(self) -> str:
        path = self.path
        when = path.stat().st_mtime if path is not None else 0.0
        return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")

    @staticmethod
    def details(info: ModelInfo) -> dict[str, Any]:
        """``details``."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": info.architecture,
            "families": [info.architecture],
            "parameter_size": parameter_size(info.n_params),
            "quantization_level": info.quantization,
        }

    def _size(self, info: ModelInfo) -> int:
        path = self.path
        return path.stat().st_size if path is not None else info.size_bytes

    async def entry(self, info: ModelInfo) -> dict[str, Any]:
        """An entry of ``/api/tags``."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self._modified(),
            "size": self._size(info),
            "digest": await self.digest(),
            "details": self.details(info),
        }

    async def running(self, info: ModelInfo) -> dict[str, Any]:
        """An entry of ``/api/ps``: loaded for good, in RAM unless layers are on a GPU."""
        size = self._size(info)
        on_gpu = self.state.settings.n_gpu_layers != 0
        return {
            "name": self.name,
            "model": self.name,
            "size": size,
            "digest": await self.digest(),
            "details": self.details(info),
            "expires_at": NEVER,
            "size_vram": size if on_gpu else 0,
            "context_length": self.state.engine.n_ctx,
        }

    def parameters(self) -> str:
        """The defaults in Ollama's Modelfile syntax (clients parse ``num_ctx`` and ``stop``)."""
        limits = self.state.limits
        lines = [
            ("num_ctx", str(self.state.engine.n_ctx)),
            ("num_predict", str(limits.default_max_tokens)),
            ("temperature", f"{limits.temperature:g}"),
            ("top_k", str(limits.top_k)),
            ("top_p", f"{limits.top_p:g}"),
        ]
        if self.state.engine.renderer.default_format == "chat":
            lines.append(("stop", json.dumps("<end_of_turn>")))
        return "\n".join(f"{key:<30} {value}" for key, value in lines)

    def show(self, info: ModelInfo) -> dict[str, Any]:
        """``/api/show``."""
        renderer = self.state.engine.renderer
        arch = info.architecture
        return {
            "modelfile": f"# the FazAI Gemma Worker's model\nFROM {self.name}\n",
            "parameters": self.parameters(),
            "template": renderer.template_source or "{{ .Prompt }}",
            "details": self.details(info),
            "model_info": {
                "general.architecture": arch,
                "general.name": info.name,
                "general.parameter_count": info.n_params,
                f"{arch}.context_length": info.n_ctx_train,
                f"{arch}.vocab_size": info.n_vocab,
            },
            "capabilities": ["completion", "tools"],
            "modified_at": self._modified(),
        }
