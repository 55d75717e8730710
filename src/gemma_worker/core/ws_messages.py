"""Parsing of client WebSocket messages (sans-I/O).

A client message is one JSON object. Without ``type`` (or with ``"type": "execute"``) it is a
generation request; ``{"type": "cancel", "request_id": ...}`` cancels one in flight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.request import ExecuteRequest, describe_validation_error, is_valid_id


@dataclass(frozen=True, slots=True)
class ExecuteMessage:
    """Start a generation."""

    request: ExecuteRequest


@dataclass(frozen=True, slots=True)
class CancelMessage:
    """Cancel the request ``request_id`` (or the only one in flight when ``None``)."""

    request_id: str | None


ClientMessage = ExecuteMessage | CancelMessage


class ProtocolError(WorkerError):
    """A client message that cannot be acted on; ``request_id`` is echoed when it was readable."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(raw: str | bytes) -> dict[str, object]:
    """Decode one JSON object; NaN/Infinity literals are rejected like any other non-JSON."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "message is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # huge integers too (int digit limit)
        raise ProtocolError(ErrorCode.INVALID_JSON, "message is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "message must be a JSON object")
    return value


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Turn one WebSocket message into a :data:`ClientMessage` or raise :class:`ProtocolError`."""
    obj = parse_json_object(raw)
    raw_id = obj.get("request_id")
    request_id = raw_id if isinstance(raw_id, str) and is_valid_id(raw_id) else None
    kind = obj.get("type", "execute")
    if kind == "cancel":
        if raw_id is not None and request_id is None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "request_id is not a valid id")
        return CancelMessage(request_id)
    if kind != "execute":
        shown = kind if isinstance(kind, str) and len(kind) <= 32 else "?"
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"unknown message type {shown!r}", request_id
        )
    body = {k: v for k, v in obj.items() if k != "type"}
    try:
        request = ExecuteRequest.model_validate(body)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, describe_validation_error(exc), request_id
        ) from exc
    return ExecuteMessage(request)


#: Longest accepted auth message; a token is far shorter.
MAX_AUTH_MESSAGE = 4096


def parse_auth_message(raw: str | None) -> str | None:
    """The token of an ``{"type": "auth", "token": "..."}`` message, else ``None``."""
    if raw is None or len(raw) > MAX_AUTH_MESSAGE:
        return None
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("type") != "auth":
        return None
    token = message.get("token")
    return token if isinstance(token, str) else None
