"""``response_format``: one type for every dialect (OpenAI's shape), and the grammar it asks for."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gemma_worker.core.json_schema import JSON_OBJECT_GBNF, schema_to_gbnf


class JsonSchemaSpec(BaseModel):
    """OpenAI's ``response_format.json_schema``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
    description: str | None = None
    schema_: Annotated[
        dict[str, Any],
        Field(alias="schema", description="The JSON Schema the answer must validate against."),
    ] = Field(default_factory=dict)
    strict: bool | None = None


class TextFormat(BaseModel):
    """Free text (the default)."""

    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    """The answer is one JSON object."""

    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    """The answer is JSON that validates against ``json_schema.schema``."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


def grammar_for(fmt: TextFormat | JsonObjectFormat | JsonSchemaFormat | None) -> str | None:
    """The GBNF grammar that enforces ``fmt`` (``None`` for free text); raises
    :class:`~gemma_worker.core.json_schema.SchemaError` for a schema that cannot be enforced."""
    if isinstance(fmt, JsonObjectFormat):
        return JSON_OBJECT_GBNF
    if isinstance(fmt, JsonSchemaFormat):
        return schema_to_gbnf(fmt.json_schema.schema_)
    return None
