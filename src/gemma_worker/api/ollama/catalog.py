"""The models as Ollama describes them: ``/api/tags``, ``/api/show`` and ``/api/ps``.

File details (size, digest, modification time) are shown only to admin keys (and on a
keyless worker); other keys see names, state and what the model is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gemma_worker.engine.gguf_header import GgufError, GgufHeader, read_gguf_header
from gemma_worker.engine.llama import ModelInfo
from gemma_worker.runtime.models import ModelView
from gemma_worker.runtime.registry import ModelSpec, request_limits
from gemma_worker.runtime.state import WorkerState

#: ``expires_at`` of a model that stays loaded (Ollama's ``keep_alive: -1`` shows a far date).
NEVER = "2318-11-26T00:00:00Z"


def parameter_size(n_params: int) -> str:
    """Ollama's spelling of a parameter count: ``268.10M``, ``3.2B``."""
    return f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.2f}M"


def ollama_name(spec: ModelSpec) -> str:
    """A model's name in Ollama's answers: its id tagged ``latest``."""
    return f"{spec.id}:latest"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mtime(path: Path) -> float:
    return path.stat().st_mtime  # one stat: as cheap as the dict lookup it keys


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


class ModelCatalog:
    """What Ollama's listing routes say about each model. A file's sha256 is computed once
    per file version, off the event loop, when first asked for."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._digests: dict[tuple[Path, float], asyncio.Task[str]] = {}
        self._headers: dict[tuple[Path, float], GgufHeader | None] = {}
        self._built: dict[str, Path] = {}

    async def _path(self, spec: ModelSpec) -> Path | None:
        if spec.path is not None:
            return spec.path if spec.path.is_file() else None
        if spec.id not in self._built:  # a built-in model: made (and checked) once
            try:
                self._built[spec.id] = await asyncio.to_thread(spec.locate)
            except Exception:
                return None
        return self._built[spec.id]

    async def _digest(self, path: Path) -> str:
        key = (path, _mtime(path))
        task = self._digests.get(key)
        if task is None:
            task = self._digests[key] = asyncio.ensure_future(asyncio.to_thread(_sha256, path))
        try:
            return await asyncio.shield(task)
        except OSError:
            self._digests.pop(key, None)  # try again next time
            raise

    async def _header(self, path: Path) -> GgufHeader | None:
        key = (path, _mtime(path))
        if key not in self._headers:
            try:
                self._headers[key] = await asyncio.to_thread(read_gguf_header, path)
            except GgufError:
                self._headers[key] = None
        return self._headers[key]

    async def details(self, view: ModelView) -> dict[str, Any]:
        """``details``: from the loaded model, else from its file's header."""
        info = None if view.engine is None else view.engine.info
        if info is not None:
            return _details(info.architecture, parameter_size(info.n_params), info.quantization)
        path = await self._path(view.spec)
        header = None if path is None else await self._header(path)
        if header is None:
            return _details("unknown", "unknown", "unknown")
        arch = header.metadata.get("general.architecture", "unknown")
        size = header.metadata.get("general.size_label", "unknown")
        return _details(str(arch), str(size), header.quantization)

    async def _files(self, spec: ModelSpec) -> dict[str, Any]:
        path = await self._path(spec)
        if path is None:
            return {}
        stat = path.stat()
        return {
            "modified_at": _iso(stat.st_mtime),
            "size": stat.st_size,
            "digest": await self._digest(path),
        }

    async def entry(self, view: ModelView, *, files: bool) -> dict[str, Any]:
        """An entry of ``/api/tags`` (``files``: with size, digest and time)."""
        name = ollama_name(view.spec)
        return {
            "name": name,
            "model": name,
            **(await self._files(view.spec) if files else {}),
            "details": await self.details(view),
        }

    async def running(self, view: ModelView, *, files: bool) -> dict[str, Any]:
        """An entry of ``/api/ps``: in RAM unless layers are on a GPU."""
        on_gpu = self.state.settings.n_gpu_layers != 0
        entry = await self.entry(view, files=files)
        size = int(entry.get("size", 0)) + (view.need.kv_cache if view.need else 0)
        expires = view.expires_at
        return {
            **entry,
            "size": size if files else 0,
            "expires_at": NEVER if expires is None or math.isinf(expires) else _iso(expires),
            "size_vram": size if on_gpu and files else 0,
            "context_length": view.engine.n_ctx if view.engine is not None else 0,
        }

    def parameters(self, view: ModelView) -> str:
        """The defaults in Ollama's Modelfile syntax (clients parse ``num_ctx`` and ``stop``)."""
        limits = request_limits(self.state.settings, view.spec)
        engine = view.engine
        n_ctx = engine.n_ctx if engine is not None else self.state.settings.n_ctx
        lines = [
            ("num_ctx", str(view.spec.settings.n_ctx or n_ctx)),
            ("num_predict", str(limits.default_max_tokens)),
            ("temperature", f"{limits.temperature:g}"),
            ("top_k", str(limits.top_k)),
            ("top_p", f"{limits.top_p:g}"),
        ]
        if engine is not None and engine.renderer.default_format == "chat":
            lines.append(("stop", json.dumps("<end_of_turn>")))
        return "\n".join(f"{key:<30} {value}" for key, value in lines)

    async def show(self, view: ModelView, *, files: bool) -> dict[str, Any]:
        """``/api/show``."""
        name = ollama_name(view.spec)
        engine = view.engine
        info: ModelInfo | None = None if engine is None else engine.info
        details = await self.details(view)
        model_info: dict[str, Any] = {"general.architecture": details["family"]}
        if info is not None:
            arch = info.architecture
            model_info = {
                "general.architecture": arch,
                "general.name": info.name,
                "general.parameter_count": info.n_params,
                f"{arch}.context_length": info.n_ctx_train,
                f"{arch}.vocab_size": info.n_vocab,
            }
        template = engine.renderer.template_source if engine is not None else None
        files_part = await self._files(view.spec) if files else {}
        return {
            "modelfile": f"# the FazAI Gemma Worker's model\nFROM {name}\n",
            "parameters": self.parameters(view),
            "template": template or "{{ .Prompt }}",
            "details": details,
            "model_info": model_info,
            "capabilities": ["embedding"] if view.spec.embeds_only else ["completion", "tools"],
            **({"modified_at": files_part["modified_at"]} if files_part else {}),
        }


def _details(family: str, size: str, quantization: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": size,
        "quantization_level": quantization,
    }
