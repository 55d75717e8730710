"""The worker's runtime below the HTTP layer (no FastAPI here): the generation pipeline every
API dialect runs on, admission and lifecycle (:mod:`.state`), rate limits and metrics."""
