"""OpenAI's ``POST /v1/embeddings``: its body, its answer (floats or base64) and its route."""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gemma_worker.api.auth import caller_of
from gemma_worker.api.deps import state_of
from gemma_worker.api.embed_inputs import parse_inputs
from gemma_worker.api.embed_json import vectors_json
from gemma_worker.api.errors import error_response
from gemma_worker.api.json_body import body_schema, read_body
from gemma_worker.core.errors import WorkerError
from gemma_worker.runtime.embedding import EmbeddingRequest, Embeddings, embed

router = APIRouter(tags=["OpenAI-compatible"])


class EmbeddingBody(BaseModel):
    """OpenAI's embedding request (``user`` and unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")
    input: Any = Field(
        description="A string, a list of strings, a list of token ids, or a list of those."
    )
    model: str | None = Field(
        default=None,
        description="The embedding model (default: the built-in all-MiniLM-L6-v2; without a "
        "models folder, names that are not the worker's also mean it).",
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None, description="Keep the first this many components, re-normalised."
    )
    #: Not OpenAI's: cut inputs over the model's limit instead of refusing them.
    truncate: bool = False


def encode(result: Embeddings, encoding_format: str) -> Response:
    """OpenAI's answer: a list of ``embedding`` objects, then the model and ``usage``
    (serialised by orjson straight from the float32 rows: thousands of floats a request)."""
    vectors = result.vectors
    data: list[dict[str, Any]] = []
    for i in range(vectors.shape[0]):
        row = vectors[i]
        value: Any = (
            base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
            if encoding_format == "base64"
            else row
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    body = {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": result.n_tokens, "total_tokens": result.n_tokens},
    }
    return vectors_json(body)


@router.post(
    "/v1/embeddings",
    summary="Embeddings (OpenAI-compatible)",
    openapi_extra=body_schema(EmbeddingBody),
    response_model=None,
)
async def embeddings(request: Request) -> Response:
    """One vector per input, L2-normalised, as OpenAI's are."""
    body = await read_body(request, EmbeddingBody)
    try:
        result = await embed(
            state_of(request),
            EmbeddingRequest(
                inputs=parse_inputs(body.input, "input", tokens=True),
                caller=caller_of(request.scope),
                transport="openai",
                model=body.model,
                truncate=body.truncate,
                dimensions=body.dimensions,
            ),
        )
    except WorkerError as exc:
        return error_response(request, exc)
    return encode(result, body.encoding_format)
