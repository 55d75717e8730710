"""Fixtures of the engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.llama import LlamaModel
from gemma_worker.engine.model_files import resolve_model_path


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    """The embedded model with one small context: for its vocabulary."""
    m = LlamaModel(
        Path(resolve_model_path(None)),
        n_ctx_seq=128,
        n_seq=1,
        n_batch=64,
        n_threads=1,
        n_gpu_layers=0,
        kernels=KernelChoices.deterministic(),
    )
    yield m
    m.close()
