"""A GGUF model loaded for embeddings: a llama.cpp context that pools each sequence's hidden
states into one vector (mean, CLS or last token), and for short batches a second one
(:func:`decode_plan`).

Everything here must run on the embedding engine's thread, as in :mod:`.llama`; tokenizing
only reads the vocabulary and may run beside it.
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np
import numpy.typing as npt

from gemma_worker.engine.kernels import KernelChoices, KernelConflictError
from gemma_worker.engine.llama import (
    Batch,
    ModelInfo,
    ModelLoadError,
    _init_backend,
    quantization_name,
)


class Pooling(StrEnum):
    """How a sequence's token states become its one vector."""

    MEAN = "mean"
    CLS = "cls"
    LAST = "last"


_LLAMA_POOLING = {
    Pooling.MEAN: lc.LLAMA_POOLING_TYPE_MEAN,
    Pooling.CLS: lc.LLAMA_POOLING_TYPE_CLS,
    Pooling.LAST: lc.LLAMA_POOLING_TYPE_LAST,
}
_FROM_LLAMA = {v: k for k, v in _LLAMA_POOLING.items()}

#: Most sequences one decode packs (llama.cpp allows up to 256).
MAX_SEQS = 64

#: ggml's CPU flash attention runs its tiled kernel from this many query rows (a batch's
#: tokens; ``GGML_FA_TILE_Q`` in ggml-cpu). Under it, it runs a scalar kernel that costs
#: more than the batch's matmuls: all-MiniLM-L6-v2 decoded one input of 56 tokens in 12.6
#: ms, of 64 tokens in 6.6 ms (one run of a scratch script, 2 threads).
FA_TILE_ROWS = 64
#: A batch of this many tokens or more, but under :data:`FA_TILE_ROWS`, is padded up to it.
#: Below it padding costs more than it saves, about (measured on all-MiniLM-L6-v2, where the
#: crossing was 44-48 tokens: docs/PERFORMANCE.md, ``bench/embed_shapes.py``).
PAD_FROM = 48


@dataclass(frozen=True, slots=True)
class DecodePlan:
    """How one batch is decoded on the CPU: with flash attention or without (the small
    context), and how many tokens of a throwaway sequence fill it up to the tiled kernel."""

    flash: bool
    filler: int


_FLASH = DecodePlan(flash=True, filler=0)
_PLAIN = DecodePlan(flash=False, filler=0)


def decode_plan(n_inputs: int, n_tokens: int) -> DecodePlan:
    """The fastest way measured to decode ``n_inputs`` inputs of ``n_tokens`` tokens in all:

    - from :data:`FA_TILE_ROWS` tokens, flash attention (its tiled kernel);
    - from :data:`PAD_FROM`, flash attention, padded up to :data:`FA_TILE_ROWS` with a
      sequence of its own, which attends only to itself and whose vector is dropped;
    - below, one input without flash attention (its plain matmuls beat the scalar kernel
      by 5-12% on 8-47 tokens); several inputs with it, whose kernel skips the pairs of
      tokens of different inputs that plain attention would compute.
    """
    if n_tokens >= FA_TILE_ROWS:
        return _FLASH
    if n_tokens >= PAD_FROM:
        return DecodePlan(flash=True, filler=FA_TILE_ROWS - n_tokens)
    return _PLAIN if n_inputs == 1 else _FLASH


def normalize_rows(rows: npt.NDArray[np.float32]) -> None:
    """Scale each row of ``rows`` to unit L2 length, in place (an all-zero row stays so). A
    lone row takes one dot product: right after a decode every numpy call runs cold."""
    if len(rows) == 1:
        row = rows[0]
        rows *= 1.0 / max(math.sqrt(float(row @ row)), 1e-12)
    else:
        rows /= np.maximum(np.sqrt(np.einsum("ij,ij->i", rows, rows)), 1e-12)[:, None]


class EmbeddingModel:
    """A model with its embedding context: batches of up to ``n_batch`` tokens in up to
    :data:`MAX_SEQS` sequences, each input at most ``max_input`` tokens (the model's
    training context at most). llama.cpp pools a sequence within one micro-batch, so an
    input is never split and a batch is one micro-batch.

    A model without a KV cache, in a CPU-only build and with kernels that need not be
    batch-invariant, decodes short batches as :func:`decode_plan` says: a second, small
    context without flash attention serves a lone short input (flash attention is fixed per
    context). Its vectors then differ from the flash-attention context's by rounding (cosine
    > 0.99999), so an input's vector depends on its batch; with batch-invariant kernels
    every batch runs on the one context, as llama-server does."""

    def __init__(
        self,
        path: Path,
        *,
        pooling: Pooling | None,
        max_input_tokens: int,
        n_batch: int,
        n_threads: int | None,
        n_gpu_layers: int,
        kernels: KernelChoices,
    ) -> None:
        """``pooling`` ``None``: the GGUF's own (``mean`` when it names none)."""
        try:
            kernels.apply_process_wide()
        except KernelConflictError as exc:
            raise ModelLoadError(str(exc)) from exc
        _init_backend()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ModelLoadError(f"model file not found or not readable: {path}")
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers if n_gpu_layers >= 0 else 999
        mparams.use_extra_bufts = kernels.repack_weights
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise ModelLoadError(f"not a loadable GGUF model: {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        n_ctx_train = int(lc.llama_model_n_ctx_train(self.model))
        #: The longest input, in tokens.
        self.max_input = max(1, min(max_input_tokens, n_ctx_train or max_input_tokens))
        #: The most tokens in one decode.
        self.n_batch = max(n_batch, self.max_input)
        threads = n_threads or os.cpu_count() or 1
        self._small_ctx = None
        self._pooling_type = (
            lc.LLAMA_POOLING_TYPE_UNSPECIFIED if pooling is None else _LLAMA_POOLING[pooling]
        )
        # Pairs of tokens of different inputs are masked out and skipped by flash attention
        # (without it they would be computed, quadratic in the batch); the scan over them
        # remains, so moderate batches pay best (GEMMA_EMBEDDING_BATCH_TOKENS).
        self.ctx = self._context(self.n_batch, MAX_SEQS, threads, flash=True)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise ModelLoadError("could not create a llama.cpp context (out of memory?)")
        try:
            self._finish_load(n_ctx_train, threads, kernels)
        except BaseException:
            self.close()
            raise

    def _finish_load(self, n_ctx_train: int, threads: int, kernels: KernelChoices) -> None:
        self.memory = lc.llama_get_memory(self.ctx)
        #: Whether short batches follow :func:`decode_plan`: in a CPU-only build (a GPU
        #: build offloads large matmuls even with no layers on the GPU), with kernels that
        #: need not be batch-invariant, with room to pad, for a model without a KV cache
        #: (BERT-like: a batch attends only within itself). A causal model's attention spans
        #: its cache; there the plans measured slower (Gemma 3 270M: plain 1.01-1.06x,
        #: padded 1.05-2.8x the time of flash attention).
        self.shaped = (
            not lc.llama_supports_gpu_offload()
            and not kernels.batch_invariant
            and not self.memory
            and self.n_batch >= FA_TILE_ROWS
            and n_ctx_train >= FA_TILE_ROWS
        )
        if self.shaped:
            self._small_ctx = self._context(PAD_FROM, 1, threads, flash=False)
            if not self._small_ctx:
                raise ModelLoadError("could not create a llama.cpp context (out of memory?)")
        kind = int(lc.llama_pooling_type(self.ctx))
        if kind not in _FROM_LLAMA:
            raise ModelLoadError("the model pools its embeddings in a way the worker cannot use")
        self.pooling = _FROM_LLAMA[kind]
        self.n_embd = int(lc.llama_model_n_embd_out(self.model)) or int(
            lc.llama_model_n_embd(self.model)
        )
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.info = self._read_info(n_ctx_train)
        self._batch = Batch(self.n_batch)

    def _context(self, n_tokens: int, n_seqs: int, threads: int, *, flash: bool) -> Any:
        cparams = lc.llama_context_default_params()
        cparams.embeddings = True
        cparams.pooling_type = self._pooling_type
        cparams.n_ctx = n_tokens
        cparams.n_batch = n_tokens
        cparams.n_ubatch = n_tokens
        cparams.n_seq_max = n_seqs
        cparams.kv_unified = True  # every sequence of a batch shares the one buffer
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        cparams.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        return lc.llama_init_from_model(self.model, cparams)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", "replace")

    def _read_info(self, n_ctx_train: int) -> ModelInfo:
        desc = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.model, desc, len(desc))
        return ModelInfo(
            name=self._meta("general.name") or "unknown",
            architecture=self._meta("general.architecture") or "unknown",
            n_params=int(lc.llama_model_n_params(self.model)),
            size_bytes=int(lc.llama_model_size(self.model)),
            n_ctx_train=n_ctx_train,
            n_vocab=self.n_vocab,
            has_chat_template=False,
            instruction_tuned=False,
            quantization=quantization_name(desc.value.decode("utf-8", "replace")),
        )

    def tokenize(self, text: str) -> list[int]:
        """``text`` as the model reads it (with its special tokens around it, e.g. BERT's
        ``[CLS] ... [SEP]``; special tokens written in it are parsed, as Hugging Face's
        tokenizers do)."""
        return self.tokenize_with(text, add_special=True, parse_special=True)

    def tokenize_with(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """``text`` as token ids, with the given llama.cpp flags."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def special_piece(self, token: int) -> bytes:
        """The bytes of ``token``, special tokens spelled out."""
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
        return buf.raw[: max(n, 0)]

    @property
    def end_tokens(self) -> list[int]:
        """What the tokenizer appends to each input (BERT's ``[SEP]``, kept when an input is
        truncated)."""
        if lc.llama_vocab_get_add_sep(self.vocab):
            end = int(lc.llama_vocab_sep(self.vocab))
        elif lc.llama_vocab_get_add_eos(self.vocab):
            end = int(lc.llama_vocab_eos(self.vocab))
        else:
            return []
        return [end] if end >= 0 else []

    def embed(
        self, inputs: list[list[int]], plan: DecodePlan | None = None
    ) -> npt.NDArray[np.float32] | None:
        """The pooled, L2-normalised vectors of ``inputs`` (one row each) from one decode;
        ``None`` if llama.cpp fails. The caller keeps the batch within ``n_batch`` tokens and
        :data:`MAX_SEQS` inputs, each within ``max_input``. ``plan``: :func:`decode_plan`'s
        when the model is :attr:`shaped`, else flash attention as it is; given (benches,
        tests), a plan without flash attention takes one input under :data:`PAD_FROM`
        tokens, and a filler stays within ``n_batch``."""
        batch = self._batch
        batch.clear()
        for seq, tokens in enumerate(inputs):
            batch.add_sequence(tokens, seq)
        if plan is None:
            plan = decode_plan(len(inputs), batch.n_tokens) if self.shaped else _FLASH
        else:
            self._check(plan, len(inputs), batch.n_tokens)
        ctx = self.ctx
        if not plan.flash:
            ctx = self._small_ctx  # no KV cache, as the model is shaped
        if plan.filler:
            batch.add_sequence([0] * plan.filler, len(inputs))
        if self.memory:
            lc.llama_memory_clear(self.memory, True)
        if int(lc.llama_decode(ctx, batch.raw)) != 0:
            return None
        # Few numpy calls from here: right after a decode the caches are cold and each call
        # costs tens of microseconds (a lone input's read and normalising took 135 us with
        # as_array and linalg.norm, 71 us with np.empty and its .ctypes, 41 us so).
        n_rows, row_bytes = len(inputs), 4 * self.n_embd
        buffer = (ctypes.c_float * (n_rows * self.n_embd))()
        address = ctypes.addressof(buffer)
        for seq in range(n_rows):
            ptr = lc.llama_get_embeddings_seq(ctx, seq)
            if not ptr:
                return None
            ctypes.memmove(address + seq * row_bytes, ptr, row_bytes)
        out: npt.NDArray[np.float32] = np.frombuffer(memoryview(buffer), dtype=np.float32)
        out = out.reshape(n_rows, self.n_embd)
        normalize_rows(out)
        return out

    def _check(self, plan: DecodePlan, n_inputs: int, n_tokens: int) -> None:
        """:class:`ValueError` unless this model can decode the batch as ``plan`` says."""
        if not plan.flash:
            if not self._small_ctx:
                raise ValueError("this model has no context without flash attention")
            if plan.filler or n_inputs != 1 or n_tokens >= PAD_FROM:
                raise ValueError("a plan without flash attention takes one short input")
        if plan.filler < 0 or (
            plan.filler and (n_tokens + plan.filler > self.n_batch or n_inputs >= MAX_SEQS)
        ):
            raise ValueError("the filler does not fit in the batch")

    def close(self) -> None:
        """Free the contexts and the model."""
        if getattr(self, "_batch", None) is not None:
            self._batch.free()
            del self._batch
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self._small_ctx:
            lc.llama_free(self._small_ctx)
            self._small_ctx = None
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None
