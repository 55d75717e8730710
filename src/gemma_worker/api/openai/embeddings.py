"""OpenAI's ``POST /v1/embeddings``: its body, its answer (floats or base64) and its route."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gemma_worker.api.embed_inputs import parse_inputs
from gemma_worker.api.json_route import Call, JsonRoute
from gemma_worker.runtime.embedding import EmbeddingRequest, Embeddings, embed


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


def encode(result: Embeddings, encoding_format: str) -> dict[str, Any]:
    """OpenAI's answer: a list of ``embedding`` objects, then the model and ``usage`` (the
    float rows stay numpy arrays, for orjson to write)."""
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
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": result.n_tokens, "total_tokens": result.n_tokens},
    }


async def embeddings(call: Call[EmbeddingBody]) -> None:
    """One vector per input, L2-normalised, as OpenAI's are."""
    body = call.body

    async def deliver(result: Embeddings) -> None:
        await call.answer(encode(result, body.encoding_format))

    request = EmbeddingRequest(
        inputs=parse_inputs(body.input, "input", tokens=True),
        caller=call.caller,
        transport="openai",
        model=body.model,
        truncate=body.truncate,
        dimensions=body.dimensions,
    )
    await embed(call.state, request, deliver)


route = JsonRoute(
    "/v1/embeddings",
    EmbeddingBody,
    embeddings,
    summary="Embeddings (OpenAI-compatible)",
    tag="OpenAI-compatible",
)
