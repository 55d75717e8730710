"""Whether a model fits in memory before it is loaded (never an OOM kill mid-load).

The estimate is an upper bound: the weights (the file; llama.cpp maps it), the KV cache as if
every layer kept the whole context (sliding-window layers keep less), the logits and a
margin for llama.cpp's compute buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gemma_worker.engine.gguf_header import GgufHeader

#: llama.cpp's compute buffers and the worker's own per-model state, beyond the KV cache.
_COMPUTE_MARGIN = 192 * 1024 * 1024
_F16 = 2
_GIB = 1024**3


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """What loading a model takes (bytes)."""

    weights: int
    kv_cache: int
    other: int

    @property
    def total(self) -> int:
        """All of it."""
        return self.weights + self.kv_cache + self.other

    def describe(self, available: int) -> str:
        """The numbers, for an error message."""
        return (
            f"it needs about {_gib(self.total)} (weights {_gib(self.weights)}, KV cache "
            f"{_gib(self.kv_cache)}, buffers {_gib(self.other)}) and {_gib(available)} of "
            "memory is available"
        )


def _gib(n: int) -> str:
    return f"{n / _GIB:.2f} GiB"


def memory_need(header: GgufHeader, file_size: int, n_ctx_seq: int, n_seq: int) -> MemoryNeed:
    """The memory a model with ``header`` takes with ``n_seq`` slots of ``n_ctx_seq`` tokens."""
    n_layer = header.arch_int("block_count")
    n_head = header.arch_int("attention.head_count", 1)
    n_head_kv = header.arch_int("attention.head_count_kv", n_head)
    n_embd = header.arch_int("embedding_length")
    head_dim = n_embd // max(n_head, 1)
    k_len = header.arch_int("attention.key_length", head_dim)
    v_len = header.arch_int("attention.value_length", head_dim)
    kv = n_layer * n_head_kv * (k_len + v_len) * _F16 * n_ctx_seq * n_seq
    tokens = header.metadata.get("tokenizer.ggml.tokens")  # skipped when long: count unknown
    n_vocab = header.arch_int("vocab_size", len(tokens) if isinstance(tokens, tuple) else 262_144)
    logits = 4 * n_vocab * n_seq
    return MemoryNeed(file_size, kv, logits + _COMPUTE_MARGIN)


def parse_meminfo(text: str) -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def available_memory() -> int | None:
    """Memory this process may still take (bytes): the machine's available memory, bounded
    by the cgroup's limit when there is one; ``None`` when unknown (not Linux)."""
    try:
        available = parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max" and available is not None:
            available = min(available, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return available
