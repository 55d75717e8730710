"""OpenAI's Responses API (``/v1/responses``) on the generation core, stateful on the store."""
