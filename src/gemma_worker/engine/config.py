"""What the engine needs from the settings (built by :meth:`Settings.engine_config`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gemma_worker.core.scheduling import StepEntry
from gemma_worker.engine.compute_gate import ComputeGate
from gemma_worker.engine.kernels import KernelChoices


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the engine needs from the settings."""

    model_path: Path | None
    n_ctx: int
    parallel: int
    n_batch: int
    prefill_chunk: int
    max_queue: int
    n_threads: int | None
    n_gpu_layers: int
    stream_buffer: int
    kernels: KernelChoices = field(default_factory=KernelChoices.deterministic)
    prefill_gap_factor: float = 2.0
    max_input_tokens: int | None = None
    #: Most requests one client may have running or waiting (``None``: no cap of its own).
    max_pending_per_client: int | None = None
    #: Where idle sessions' KV caches are saved when their slot is taken or the worker stops
    #: (``None`` or a zero budget: never).
    kv_dir: Path | None = None
    kv_disk_bytes: int = 0
    #: Whether constrained answers are steered to close within their token budget.
    grammar_budget: bool = True
    #: Whether decoding sequences draft tokens from their context and verify them in the step
    #: (draft-free speculative decoding; outputs are the same either way).
    speculation: bool = True
    #: The most draft tokens one sequence verifies in a step.
    max_draft: int = 48
    #: A Jinja chat template used instead of the model's own (``None``: the GGUF's).
    chat_template: str | None = None
    #: Held around every decode; shared by every engine of the process (one decode at a time).
    gate: ComputeGate = field(default_factory=ComputeGate)
    #: Called on the engine thread with each step's plan before it runs (tracing, tests).
    on_step: Callable[[Sequence[StepEntry]], None] | None = None
