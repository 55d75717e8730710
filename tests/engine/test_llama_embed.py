"""The embedding model's decode plans: which context and padding a batch's shape gets, and
that every plan gives the vectors the one flash-attention context gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gemma_worker.engine.kernels import KernelChoices
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


@pytest.fixture(scope="module")
def minilm() -> Iterator[EmbeddingModel]:
    m = EmbeddingModel(
        minilm_path(),
        pooling=None,
        max_input_tokens=512,
        n_batch=512,
        n_threads=2,
        n_gpu_layers=0,
        kernels=KernelChoices.deterministic(),  # as the other engine tests in this process
    )
    yield m
    m.close()


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
    minilm: EmbeddingModel, lengths: list[int], flash: bool, filler: int
) -> None:
    assert minilm.shaped
    words = minilm.tokenize(TEXT * 3)[1:-1]
    inputs = [words[i * 7 : i * 7 + n] for i, n in enumerate(lengths)]
    assert decode_plan(len(inputs), sum(lengths)) == DecodePlan(flash=flash, filler=filler)
    got = minilm.embed(inputs)
    assert got is not None and got.shape == (len(inputs), minilm.n_embd)
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
    with pytest.raises(ValueError, match="does not fit"):
        minilm.embed([words[:10]], DecodePlan(flash=True, filler=minilm.n_batch))
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
