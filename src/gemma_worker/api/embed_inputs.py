"""Embedding inputs as clients send them, checked one by one (errors name ``input[i]``)."""

from __future__ import annotations

from typing import Any

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.runtime.embedding import EmbeddingInput

#: Largest token id a client may send (any id past the vocabulary is refused later).
_MAX_TOKEN_ID = 2**31 - 1


def _invalid(where: str, message: str) -> WorkerError:
    return WorkerError(ErrorCode.INVALID_REQUEST, f"{where}: {message}", param=where)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tokens(value: list[Any], where: str) -> tuple[int, ...]:
    for j, token in enumerate(value):
        if not _is_token(token):
            raise _invalid(f"{where}[{j}]", "a token id must be an integer")
        if not 0 <= token <= _MAX_TOKEN_ID:
            raise _invalid(f"{where}[{j}]", f"token id {token} is not in the vocabulary")
    return tuple(value)


def parse_inputs(value: Any, field: str, *, tokens: bool) -> tuple[EmbeddingInput, ...]:
    """``value`` as inputs: a string or a list of strings; with ``tokens`` also a list of
    token ids or a list of such lists (OpenAI's forms). ``INVALID_REQUEST`` naming the field
    or the item otherwise. Emptiness is the pipeline's to judge."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        kinds = "a string, a list of strings or of token ids" if tokens else "a string or a list"
        raise _invalid(field, f"must be {kinds}")
    if tokens and value and _is_token(value[0]):
        return (_tokens(value, field),)
    out: list[EmbeddingInput] = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if isinstance(item, str):
            out.append(item)
        elif tokens and isinstance(item, list):
            out.append(_tokens(item, where))
        else:
            kinds = "a string or a list of token ids" if tokens else "a string"
            raise _invalid(where, f"must be {kinds}, not {_json_type(item)}")
    return tuple(out)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string"
