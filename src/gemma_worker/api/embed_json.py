"""Embedding answers as JSON: thousands of floats a request, serialised by orjson straight
from the float32 rows (both dialects' embedding routes)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response


def vectors_json(body: dict[str, Any]) -> Response:
    """``body`` as a JSON response, its numpy arrays written by orjson directly."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )
