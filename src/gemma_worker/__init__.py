"""FazAI Gemma Worker: local Gemma inference (llama.cpp) with WebSocket streaming and REST."""

__version__ = "0.1.0"

__all__ = ["__version__"]
