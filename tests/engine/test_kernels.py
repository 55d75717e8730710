"""Kernel choices: the two modes, overrides, and fast mode's outputs on the real model.

Fast mode runs in a subprocess: ggml reads two of its choices once per process, and this
suite's own process runs the deterministic kernels (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from gemma_worker.engine.kernels import KernelChoices, KernelConflictError
from gemma_worker.engine.llama_engine import LlamaEngine
from tests.conftest import PARIS_PROMPT, make_settings
from tests.engine.test_llama_engine import PROMPTS, collect, running_engine, submit

_FAST_RUN = """
import asyncio, json, sys
from gemma_worker.engine.llama_engine import LlamaEngine
from tests.conftest import make_settings
from tests.engine.test_llama_engine import collect, submit

async def main():
    settings = make_settings(deterministic=False)
    engine = LlamaEngine(settings.engine_config())
    await engine.start()
    prompts = json.loads(sys.argv[1])
    alone = (await collect(submit(engine, settings, prompts[0], 16)))[0]
    batched = await asyncio.gather(*(collect(submit(engine, settings, p, 16)) for p in prompts))
    await engine.close()
    print(json.dumps({"alone": alone, "batched": batched[0][0]}))

asyncio.run(main())
"""


def test_modes_and_overrides() -> None:
    det = KernelChoices.deterministic()
    assert det.batch_invariant
    fast = KernelChoices.for_mode(False)
    assert not fast.batch_invariant
    assert fast.repack_weights and fast.tiled_matmul and fast.flash_attn
    assert not fast.sgemm_single_rows
    assert not fast.kv_unified  # a shared buffer makes every kept cache slow attention
    mixed = KernelChoices.for_mode(True, flash_attn=True, repack_weights=None)
    assert mixed.flash_attn and not mixed.repack_weights and not mixed.batch_invariant
    assert mixed.to_dict()["batch_invariant"] is False


def test_process_wide_choices_cannot_change_once_in_force() -> None:
    # this process runs the deterministic kernels (the engine fixture loaded them)
    KernelChoices.deterministic().apply_process_wide()
    with pytest.raises(KernelConflictError, match="already in force"):
        KernelChoices.fast().apply_process_wide()


async def test_fast_mode_outputs_are_sane() -> None:
    prompts = [PARIS_PROMPT, *PROMPTS[1:4]]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FAST_RUN, json.dumps(prompts), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode == 0
    fast = json.loads(out.decode().strip().splitlines()[-1])
    settings = make_settings()
    async with running_engine(LlamaEngine(settings.engine_config())) as engine:
        exact, _ = await collect(submit(engine, settings, PARIS_PROMPT, 16))
    assert exact.split()[0] == "Paris", exact
    # fast kernels round differently, so late tokens may differ; the answer may not
    for text in (fast["alone"], fast["batched"]):
        assert text.split()[:3] == exact.split()[:3], (text, exact)
