"""HTTP and WebSocket API (FastAPI), built by :func:`gemma_worker.api.app.create_app`."""
