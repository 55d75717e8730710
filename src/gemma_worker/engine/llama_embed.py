"""A GGUF model loaded for embeddings: one llama.cpp context that pools each sequence's hidden
states into one vector (mean, CLS or last token).

Everything here must run on the embedding engine's thread, as in :mod:`.llama`; tokenizing
only reads the vocabulary and may run beside it.
"""

from __future__ import annotations

import ctypes
import os
from enum import StrEnum
from pathlib import Path

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


class EmbeddingModel:
    """A model with one embedding context: batches of up to ``n_batch`` tokens in up to
    :data:`MAX_SEQS` sequences, each input at most ``max_input`` tokens (the model's
    training context at most). llama.cpp pools a sequence within one micro-batch, so an
    input is never split and a batch is one micro-batch."""

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
        cparams = lc.llama_context_default_params()
        cparams.embeddings = True
        cparams.pooling_type = (
            lc.LLAMA_POOLING_TYPE_UNSPECIFIED if pooling is None else _LLAMA_POOLING[pooling]
        )
        cparams.n_ctx = self.n_batch
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = MAX_SEQS
        cparams.kv_unified = True  # every sequence of a batch shares the one buffer
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        # Pairs of tokens of different inputs are masked out and skipped by flash attention
        # (without it they would be computed, quadratic in the batch); the scan over them
        # remains, so moderate batches pay best (GEMMA_EMBEDDING_BATCH_TOKENS).
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise ModelLoadError("could not create a llama.cpp context (out of memory?)")
        kind = int(lc.llama_pooling_type(self.ctx))
        if kind not in _FROM_LLAMA:
            self.close()
            raise ModelLoadError("the model pools its embeddings in a way the worker cannot use")
        self.pooling = _FROM_LLAMA[kind]
        self.memory = lc.llama_get_memory(self.ctx)
        self.n_embd = int(lc.llama_model_n_embd_out(self.model)) or int(
            lc.llama_model_n_embd(self.model)
        )
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.info = self._read_info(n_ctx_train)
        self._batch = Batch(self.n_batch)

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

    def embed(self, inputs: list[list[int]]) -> npt.NDArray[np.float32] | None:
        """The pooled, L2-normalised vectors of ``inputs`` (one row each) from one decode;
        ``None`` if llama.cpp fails. The caller keeps the batch within ``n_batch`` tokens and
        :data:`MAX_SEQS` inputs, each within ``max_input``."""
        batch = self._batch
        batch.clear()
        for seq, tokens in enumerate(inputs):
            for pos, token in enumerate(tokens):
                batch.add(token, pos, seq, True)
        if self.memory:
            lc.llama_memory_clear(self.memory, True)
        if int(lc.llama_decode(self.ctx, batch.raw)) != 0:
            return None
        out = np.empty((len(inputs), self.n_embd), dtype=np.float32)
        for seq in range(len(inputs)):
            ptr = lc.llama_get_embeddings_seq(self.ctx, seq)
            if not ptr:
                return None
            out[seq] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out

    def close(self) -> None:
        """Free the context and the model."""
        if getattr(self, "_batch", None) is not None:
            self._batch.free()
            del self._batch
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None
