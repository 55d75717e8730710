"""Loading the engine for the CLI modes, with a progress display."""

from __future__ import annotations

import time

from gemma_worker.cli.progress import Progress
from gemma_worker.core.request import ExecuteRequest
from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine.llama_engine import LlamaEngine
from gemma_worker.engine.model_files import resolve_model_path
from gemma_worker.settings import Settings


def resolve_with_progress(settings: Settings, progress: Progress) -> Settings:
    """Settings whose ``model_path`` is a checked, existing file (embedded model assembled)."""
    label = (
        "assembling and verifying the embedded Gemma 3 270M"
        if settings.model_path is None
        else f"checking model file {settings.model_path}"
    )
    with progress.step(label):
        path = resolve_model_path(settings.model_path)
    return settings.model_copy(update={"model_path": path})


async def load_engine(settings: Settings, progress: Progress) -> tuple[LlamaEngine, float]:
    """A started engine and its load time in seconds."""
    settings = resolve_with_progress(settings, progress)
    engine = LlamaEngine(settings.engine_config())
    t0 = time.perf_counter()
    with progress.step("loading the model into llama.cpp"):
        await engine.start()
    return engine, time.perf_counter() - t0


def sampling_params(settings: Settings, engine: LlamaEngine, req: ExecuteRequest) -> SamplingParams:
    """The parameters ``req`` runs with on ``engine`` (the worker's defaults and limits,
    the input's length included, as the pipeline checks them)."""
    info = engine.info
    limits = settings.request_limits()
    limits.check_chars(len(req.input) + len(req.system or ""))
    return limits.resolve(
        req.sampling(), n_ctx=engine.n_ctx, n_vocab=info.n_vocab if info is not None else 0
    )
