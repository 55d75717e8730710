"""Ollama-compatible API: router, types, encoder, errors."""
