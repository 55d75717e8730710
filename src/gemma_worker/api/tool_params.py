"""A dialect's tool list read one tool at a time (sans-I/O): a tool of a type the worker
cannot run, or a malformed one, is ``INVALID_REQUEST`` naming ``tools[i]`` and its field."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gemma_worker.core.errors import ErrorCode, WorkerError

M = TypeVar("M", bound=BaseModel)


def _invalid(param: str, message: str) -> WorkerError:
    return WorkerError(ErrorCode.INVALID_REQUEST, f"{param}: {message}", param=param)


def parse_tools(
    tools: list[dict[str, Any]] | None, model: type[M], *, types: Collection[str | None]
) -> list[M]:
    """Each tool as ``model``; its ``type`` must be one of ``types`` (``None``: absent)."""
    out = []
    for i, raw in enumerate(tools or []):
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind not in types:
            raise _invalid(f"tools[{i}].type", f"tool type '{kind}' is not supported")
        try:
            out.append(model.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in (f"tools[{i}]", *first.get("loc", ())))
            raise _invalid(where, first.get("msg", "invalid")) from exc
    return out
