"""The embedding model's decode plans: which context and padding a batch's shape gets, and
that every plan gives the vectors the one flash-attention context gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np
import pytest

from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.llama import ModelLoadError
from gemma_worker.engine.llama_embed import (
    FA_TILE_ROWS,
    PAD_FROM,
    DecodePlan,
    EmbeddingModel,
    Pooling,
    decode_plan,
)
from gemma_worker.engine.minilm import minilm_path
from gemma_worker.engine.model_files import resolve_model_path

TEXT = (
    "The disk on the database server filled up overnight because the log rotation job "
    "stopped after the upgrade, so the service refused writes until an operator freed space "
    "and restarted the rotation timer by hand."
)


@pytest.mark.parametrize(
    ("n_inputs", "n_tokens", "plan"),
    [
        (1, 1, DecodePlan(flash=False, filler=0)),
        (1, PAD_FROM - 1, DecodePlan(flash=False, filler=0)),
        (2, 20, DecodePlan(flash=True, filler=0)),
        (3, PAD_FROM - 1, DecodePlan(flash=True, filler=0)),
        (1, PAD_FROM, DecodePlan(flash=True, filler=FA_TILE_ROWS - PAD_FROM)),
        (4, FA_TILE_ROWS - 1, DecodePlan(flash=True, filler=1)),
        (1, FA_TILE_ROWS, DecodePlan(flash=True, filler=0)),
        (40, 900, DecodePlan(flash=True, filler=0)),
    ],
)
def test_the_plan_follows_the_batch_shape(n_inputs: int, n_tokens: int, plan: DecodePlan) -> None:
    assert decode_plan(n_inputs, n_tokens) == plan


#: Not batch-invariant (so the plans apply), with the process-wide choices of the
#: deterministic kernels the other engine tests in this process load.
KERNELS = KernelChoices.for_mode(True, flash_attn=True)


def _minilm(kernels: KernelChoices) -> EmbeddingModel:
    return EmbeddingModel(
        minilm_path(),
        pooling=None,
        max_input_tokens=512,
        n_batch=512,
        n_threads=2,
        n_gpu_layers=0,
        kernels=kernels,
    )


@pytest.fixture(scope="module")
def minilm() -> Iterator[EmbeddingModel]:
    m = _minilm(KERNELS)
    yield m
    m.close()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, int]]:
    """Each ``llama_decode`` call's context and token count, while the test runs."""
    calls: list[tuple[Any, int]] = []
    real = lc.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        calls.append((ctx, int(batch.n_tokens)))
        return int(real(ctx, batch))

    monkeypatch.setattr(lc, "llama_decode", recording)
    return calls


FLASH = DecodePlan(flash=True, filler=0)


def _flash_only(model: EmbeddingModel, inputs: list[list[int]]) -> np.ndarray:
    """Each input alone on the flash-attention context, as before plans existed."""
    rows = [model.embed([tokens], FLASH) for tokens in inputs]
    assert all(r is not None for r in rows)
    return np.concatenate(rows)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lengths", "flash", "filler"),
    [
        ([12], False, 0),  # the small context
        ([30, 10], True, 0),  # several short inputs: flash attention as it is
        ([50], True, FA_TILE_ROWS - 50),  # padded with a throwaway sequence
        ([20, 21, 15], True, FA_TILE_ROWS - 56),
        ([70], True, 0),
    ],
)
def test_every_plan_gives_the_same_vectors(
    minilm: EmbeddingModel,
    decodes: list[tuple[Any, int]],
    lengths: list[int],
    flash: bool,
    filler: int,
) -> None:
    assert minilm.shaped
    words = minilm.tokenize(TEXT * 3)[1:-1]
    inputs = [words[i * 7 : i * 7 + n] for i, n in enumerate(lengths)]
    assert decode_plan(len(inputs), sum(lengths)) == DecodePlan(flash=flash, filler=filler)
    got = minilm.embed(inputs)
    assert got is not None and got.shape == (len(inputs), minilm.n_embd)
    # The plan ran: the small context for a lone short input, the filler in the batch.
    assert decodes == [(minilm.ctx if flash else minilm._small_ctx, sum(lengths) + filler)]
    want = _flash_only(minilm, inputs)
    cosines = (got * want).sum(axis=1)
    assert np.all(cosines > 0.99999), cosines
    # Not the same vector for every input: the filler and the inputs stay apart.
    if len(inputs) > 1:
        assert float(got[0] @ got[1]) < 0.999


def test_a_given_plan_must_fit(minilm: EmbeddingModel) -> None:
    words = minilm.tokenize(TEXT * 3)
    with pytest.raises(ValueError, match="one short input"):
        minilm.embed([words[:10], words[10:20]], DecodePlan(flash=False, filler=0))
    with pytest.raises(ValueError, match="one short input"):
        minilm.embed([words[:PAD_FROM]], DecodePlan(flash=False, filler=0))
    with pytest.raises(ValueError, match="one short input"):
        minilm.embed([words[:10]], DecodePlan(flash=False, filler=5))
    with pytest.raises(ValueError, match="does not fit"):
        minilm.embed([words[:10]], DecodePlan(flash=True, filler=minilm.n_batch))
    with pytest.raises(ValueError, match="does not fit"):
        minilm.embed([[w] for w in words[:64]], DecodePlan(flash=True, filler=1))
    # The model still embeds after refusing.
    assert minilm.embed([words[:10]]) is not None


def test_a_generative_model_keeps_flash_attention() -> None:
    """Gemma (causal, with a KV cache) pooled: no plans (they measured slower there); its
    short inputs embed as flash attention does, alone or together."""
    model = EmbeddingModel(
        Path(resolve_model_path(None)),
        pooling=Pooling.MEAN,
        max_input_tokens=512,
        n_batch=512,
        n_threads=2,
        n_gpu_layers=0,
        kernels=KernelChoices.deterministic(),
    )
    try:
        assert not model.shaped
        words = model.tokenize(TEXT * 3)
        inputs = [words[:10], words[5:57]]
        together = model.embed(inputs)
        assert together is not None
        cosines = (together * _flash_only(model, inputs)).sum(axis=1)
        assert np.all(cosines > 0.9999), cosines
        with pytest.raises(ValueError, match="no context without flash attention"):
            model.embed([words[:10]], DecodePlan(flash=False, filler=0))
    finally:
        model.close()


def test_batch_invariant_kernels_keep_one_context(decodes: list[tuple[Any, int]]) -> None:
    """Deterministic mode: an input's vector must not depend on its batch, so every batch
    runs on the flash-attention context, unpadded."""
    model = _minilm(KernelChoices.deterministic())
    try:
        assert not model.shaped
        words = model.tokenize(TEXT * 3)
        alone = model.embed([words[:12]])
        padded_size = model.embed([words[:50]])
        together = model.embed([words[:12], words[:50]])
        assert alone is not None and padded_size is not None and together is not None
        assert [(ctx, n) for ctx, n in decodes] == [
            (model.ctx, 12),
            (model.ctx, 50),
            (model.ctx, 62),
        ]
        assert np.allclose(together[0], alone[0], atol=1e-6)
        assert np.allclose(together[1], padded_size[0], atol=1e-6)
    finally:
        model.close()


def test_a_failed_small_context_fails_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    real = EmbeddingModel._context

    def no_small(self: EmbeddingModel, n: int, seqs: int, threads: int, *, flash: bool) -> Any:
        return real(self, n, seqs, threads, flash=flash) if flash else None

    monkeypatch.setattr(EmbeddingModel, "_context", no_small)
    with pytest.raises(ModelLoadError, match=r"could not create a llama\.cpp context"):
        _minilm(KERNELS)
