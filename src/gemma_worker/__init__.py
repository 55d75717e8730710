"""FazAI Gemma Worker: local Gemma inference (llama.cpp) with WebSocket streaming and REST."""

import os

__version__ = "0.1.0"

__all__ = ["__version__"]

# llama.cpp's CPU threads are OpenMP's; after each decode libgomp spins them for some 300,000
# pauses (milliseconds) before they sleep. Between short decodes (embeddings) that spin holds a
# core the event loop needs: on 2 cores one-input embedding requests ran 10-15% faster with
# 5,000, with generation speed unchanged (docs/PERFORMANCE.md). libgomp reads it once, when
# llama.cpp is first loaded, so it is set here, before any module can load llama.cpp; a value
# in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "5000")
