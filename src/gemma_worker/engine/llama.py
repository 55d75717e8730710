"""Thin typed wrappers over llama.cpp's C API (through ``llama_cpp``'s low-level bindings).

Everything here must run on the engine thread: llama.cpp contexts are not thread-safe.
Its size is the part of the C API the worker uses (model, context, batch, memory, vocabulary),
each call wrapped once.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as lc

from gemma_worker.core.text_chunks import PIECE_CHARS, anchor_pattern, pieces, probe_texts
from gemma_worker.engine.kernels import KernelChoices, KernelConflictError

log = logging.getLogger(__name__)

#: ggml log levels: WARN (mostly benign model-file remarks) becomes INFO, ERROR stays ERROR;
#: ggml's own INFO/DEBUG chatter is dropped.
_LOG_LEVELS = {3: logging.INFO, 4: logging.ERROR}
_llama_log = logging.getLogger("llama.cpp")


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user: Any) -> None:
    """Route llama.cpp's own messages (errors and warnings only) into logging."""
    py_level = _LOG_LEVELS.get(level)
    if py_level is not None and text:
        _llama_log.log(py_level, text.decode("utf-8", "replace").rstrip())


_backend_ready = False


def _init_backend() -> None:
    global _backend_ready  # noqa: PLW0603 - process-wide llama.cpp initialisation, done once
    if not _backend_ready:
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the worker reports about its model (``/ready``, ``GET /``)."""

    name: str
    architecture: str
    n_params: int
    size_bytes: int
    n_ctx_train: int
    n_vocab: int
    has_chat_template: bool
    instruction_tuned: bool
    #: The weights' type, as quantizers name it (``Q4_K_M``, ``Q8_0``, ``F16``).
    quantization: str = "unknown"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "n_params": self.n_params,
            "size_bytes": self.size_bytes,
            "n_ctx_train": self.n_ctx_train,
            "n_vocab": self.n_vocab,
            "chat_template": self.has_chat_template,
            "instruction_tuned": self.instruction_tuned,
            "quantization": self.quantization,
        }


_SIZE_WORDS = {"Small": "S", "Medium": "M", "Large": "L"}


def quantization_name(description: str) -> str:
    """The type in llama.cpp's model description, as quantizers name it: ``gemma3 270M Q4_K -
    Medium`` -> ``Q4_K_M``; ``llama 8B Q8_0`` -> ``Q8_0``."""
    parts = description.split(" ", 2)
    if len(parts) < 3:
        return "unknown"
    base, _, size = parts[2].partition(" - ")
    suffix = _SIZE_WORDS.get(size.strip())
    return f"{base}_{suffix}" if suffix else base


class ModelLoadError(Exception):
    """The model file could not be loaded (message is safe for an operator's console)."""


class Batch:
    """A reusable ``llama_batch`` of up to ``capacity`` tokens, one sequence id per token."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batch = lc.llama_batch_init(capacity, 0, 1)
        self._token = self._batch.token
        self._pos = self._batch.pos
        self._n_seq_id = self._batch.n_seq_id
        self._seq_id = self._batch.seq_id
        self._logits = self._batch.logits
        self.n_tokens = 0

    def clear(self) -> None:
        """Empty the batch."""
        self.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token; return its index in the batch (the index of its logits)."""
        i = self.n_tokens
        self._token[i] = token
        self._pos[i] = pos
        self._n_seq_id[i] = 1
        self._seq_id[i][0] = seq
        self._logits[i] = logits
        self.n_tokens = i + 1
        return i

    def add_sequence(self, tokens: Sequence[int], seq: int) -> None:
        """Append ``tokens`` as sequence ``seq`` from position 0, every one with its output
        (an embedding input). One loop without a call per token: it runs on a request's
        critical path."""
        token, pos, n_seq_id, seq_id, logits = (
            self._token,
            self._pos,
            self._n_seq_id,
            self._seq_id,
            self._logits,
        )
        i = self.n_tokens
        for p, t in enumerate(tokens):
            token[i] = t
            pos[i] = p
            n_seq_id[i] = 1
            seq_id[i][0] = seq
            logits[i] = True
            i += 1
        self.n_tokens = i

    @property
    def raw(self) -> Any:
        """The ``llama_batch`` struct with its token count set."""
        self._batch.n_tokens = self.n_tokens
        return self._batch

    def free(self) -> None:
        """Release the C memory."""
        lc.llama_batch_free(self._batch)


def ubatch_size(n_batch: int) -> int:
    """The micro-batch (``n_ubatch``) a context of ``n_batch`` runs its batches in."""
    return min(n_batch, 512)


class LlamaModel:
    """A loaded GGUF model with one context of ``n_seq`` sequences of ``n_ctx_seq`` tokens each,
    whose decodes return logits for at most ``n_outputs`` positions (default: one per
    sequence)."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx_seq: int,
        n_seq: int,
        n_batch: int,
        n_threads: int | None,
        n_gpu_layers: int,
        kernels: KernelChoices,
        n_outputs: int | None = None,
    ) -> None:
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
        threads = n_threads or os.cpu_count() or 1
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx_seq * n_seq
        cparams.n_batch = n_batch
        cparams.n_ubatch = ubatch_size(n_batch)
        cparams.n_seq_max = n_seq
        # A step samples one position per sequence, or one per verified draft token: sizing
        # the logits buffer for that instead of n_ubatch outputs saves hundreds of MiB with
        # Gemma's 262k vocabulary (1 MiB per output).
        cparams.n_outputs_max = min(n_outputs or n_seq, max(n_batch, n_seq))
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        cparams.kv_unified = kernels.kv_unified
        cparams.swa_full = False
        cparams.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if kernels.flash_attn
            else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise ModelLoadError("could not create a llama.cpp context (out of memory?)")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.memory = lc.llama_get_memory(self.ctx)
        # The per-request limit is ours: with a unified KV cache llama.cpp reports the total.
        self.n_ctx_seq = n_ctx_seq
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.kernels = kernels
        #: Sliding-window size of the model's SWA layers (0 when it has none).
        self.n_swa = int(lc.llama_model_n_swa(self.model))
        self._pieces: dict[int, bytes] = {}
        self._copying: set[int] = set()
        self._special_pieces: dict[int, bytes] = {}
        self.info = self._read_info()
        self._piecewise = False
        self._anchors = anchor_pattern(self._user_defined_texts())
        self._piecewise = self._cuts_keep_tokens()
        if not self._piecewise:
            log.info("this vocabulary is tokenized whole (its tokens span the usual cut points)")
        self.bos_head = self.tokenize("", add_special=True, parse_special=False)

    # --- metadata ---------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or ``None``."""
        buf = ctypes.create_string_buffer(1 << 16)
        n = lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    @property
    def chat_template(self) -> str | None:
        """The GGUF's default chat template, if it has one."""
        raw = lc.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def bos_text(self) -> str:
        """The text of the vocabulary's BOS token (what chat templates call ``bos_token``)."""
        bos = int(lc.llama_vocab_bos(self.vocab))
        return self.token_text(bos) if bos >= 0 else ""

    def special_texts(self) -> list[str]:
        """The spellings of the control and user-defined tokens: what a chat prompt parses
        into special tokens."""
        mask = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED
        texts = (
            self.token_text(t)
            for t in range(self.info.n_vocab)
            if lc.llama_vocab_get_attr(self.vocab, t) & mask
        )
        return [t for t in texts if t]

    def token_text(self, token: int) -> str:
        """The vocabulary text of ``token`` (e.g. ``<bos>``)."""
        raw = lc.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def _read_info(self) -> ModelInfo:
        name = self.meta("general.name") or "unknown"
        finetune = (self.meta("general.finetune") or "").lower()
        template = self.chat_template
        return ModelInfo(
            name=name,
            architecture=self.meta("general.architecture") or "unknown",
            n_params=int(lc.llama_model_n_params(self.model)),
            size_bytes=int(lc.llama_model_size(self.model)),
            n_ctx_train=int(lc.llama_model_n_ctx_train(self.model)),
            n_vocab=int(lc.llama_vocab_n_tokens(self.vocab)),
            has_chat_template=template is not None,
            instruction_tuned=template is not None
            and ("it" in finetune.split("-") or "instruct" in finetune or "chat" in finetune),
            quantization=quantization_name(self.description()),
        )

    def description(self) -> str:
        """llama.cpp's one-line description: architecture, size and type (``gemma3 270M Q4_K -
        Medium``)."""
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.model, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    # --- tokens -----------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Text to token ids, in linear time: a long text is tokenized in pieces cut where no
        token spans (:mod:`gemma_worker.core.text_chunks`), when this vocabulary allows it.
        Safe beside decoding on another thread: it reads the vocabulary only (llama-server
        tokenizes on its HTTP threads the same way)."""
        if not self._piecewise or len(text) <= 2 * PIECE_CHARS:
            return self.tokenize_whole(text, add_special, parse_special)
        tokens: list[int] = []
        for i, piece in enumerate(self.pieces(text)):
            tokens += self.tokenize_whole(piece, add_special and i == 0, parse_special)
        return tokens

    def pieces(self, text: str, target: int = PIECE_CHARS) -> Iterator[str]:
        """``text`` cut where this vocabulary's tokens never span
        (:func:`gemma_worker.core.text_chunks.pieces`)."""
        return pieces(text, target, self._anchors)

    @property
    def piecewise(self) -> bool:
        """Whether this vocabulary may be tokenized in pieces (see :meth:`tokenize`)."""
        return self._piecewise

    def tokenize_whole(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        """``text`` to token ids in one llama.cpp call (quadratic in its newline and tab runs:
        for pieces, see :meth:`tokenize`)."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def _user_defined_texts(self) -> list[str]:
        """The texts llama.cpp's partition always splits out (user-defined tokens without
        whitespace stripping, whose cuts would move the whitespace)."""
        strip = lc.LLAMA_TOKEN_ATTR_LSTRIP | lc.LLAMA_TOKEN_ATTR_RSTRIP
        texts = []
        for token in range(lc.llama_vocab_n_tokens(self.vocab)):
            attr = lc.llama_vocab_get_attr(self.vocab, token)
            if attr & lc.LLAMA_TOKEN_ATTR_USER_DEFINED and not attr & strip:
                texts.append(self.token_text(token))
        return texts

    def _cuts_keep_tokens(self) -> bool:
        """Whether this vocabulary tokenizes the probe texts cut at every cut point exactly as
        whole (then long texts are tokenized in pieces)."""
        for text in probe_texts():
            for parse_special in (False, True):
                whole = self.tokenize_whole(text, True, parse_special)
                cut: list[int] = []
                for i, piece in enumerate(self.pieces(text, target=1)):
                    cut += self.tokenize_whole(piece, i == 0, parse_special)
                if cut != whole:
                    return False
        return True

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._token_to_piece(token, special=False)
            self._pieces[token] = cached
        return cached

    def special_piece(self, token: int) -> bytes:
        """The bytes of ``token`` with special tokens spelled out (``<start_of_turn>``): the
        text that tokenises back to it when special tokens are parsed."""
        cached = self._special_pieces.get(token)
        if cached is None:
            cached = self._token_to_piece(token, special=True)
            self._special_pieces[token] = cached
        return cached

    def _token_to_piece(self, token: int, *, special: bool) -> bytes:
        # A buffer per call: pieces are cached, and the vocabulary thread calls this too.
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(self.vocab, token, buf, 256, 0, special)
        return buf.raw[: max(n, 0)]

    def is_control(self, token: int) -> bool:
        """Whether ``token`` is a control token (BOS, turn markers...)."""
        return bool(lc.llama_vocab_is_control(self.vocab, token))

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS, end of turn, ...)."""
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    # --- decoding ---------------------------------------------------------------------------
    def decode(self, batch: Batch) -> int:
        """Run the model over ``batch``; 0 on success (llama.cpp's return code otherwise)."""
        rc = int(lc.llama_decode(self.ctx, batch.raw))
        if rc == 0:
            self._copying.clear()  # llama_decode applies pending copies first
        return rc

    def clear_sequence(self, seq: int) -> None:
        """Forget the KV cache of sequence ``seq``."""
        lc.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def copy_sequence(self, src: int, dst: int) -> None:
        """Make sequence ``dst``'s KV cache a copy of ``src``'s (which keeps its own), cell for
        cell. Across per-slot KV buffers llama.cpp copies the whole buffer at the next decode;
        until then both are :meth:`copy_pending`."""
        self.clear_sequence(dst)
        lc.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        self._copying.update((src, dst))

    def copy_pending(self, seq: int) -> bool:
        """Whether a copy from or to ``seq`` waits for the next decode: its bytes must then
        be neither saved (not there yet) nor overwritten by a load (the copy would read or
        clobber them)."""
        return seq in self._copying

    def keep_prefix(self, seq: int, n: int) -> bool:
        """Keep only positions ``0 .. n-1`` of sequence ``seq``; whether the cache can continue
        from position ``n`` (it cannot when sliding-window layers have already discarded
        positions the next token must attend to)."""
        if not lc.llama_memory_seq_rm(self.memory, seq, n, -1):
            return False
        return self.window_covers(seq, n)

    def window_covers(self, seq: int, n: int) -> bool:
        """Whether sequence ``seq``'s cache, cut to positions ``0 .. n-1``, could continue from
        position ``n``: its sliding-window layers still hold the positions ``n`` attends to."""
        if n == 0 or self.n_swa == 0:
            return True
        pos_min = int(lc.llama_memory_seq_pos_min(self.memory, seq))
        return 0 <= pos_min <= max(0, n - self.n_swa)

    def save_sequence(self, seq: int) -> memoryview:
        """The KV cache of sequence ``seq`` (llama.cpp's sequence state), in a buffer of its
        own that is not copied again: states run to tens of MB."""
        size = int(lc.llama_state_seq_get_size(self.ctx, seq))
        buf = (ctypes.c_uint8 * size)()
        written = int(lc.llama_state_seq_get_data(self.ctx, buf, size, seq))
        return memoryview(buf).cast("B")[:written]

    def load_sequence(self, seq: int, state: bytes | memoryview) -> bool:
        """Put a saved state into sequence ``seq`` (after clearing it); whether it loaded.
        A writable buffer (as :class:`KVFiles` returns) is used in place, not copied."""
        self.clear_sequence(seq)
        view = memoryview(state)
        if view.readonly:
            buf = (ctypes.c_uint8 * len(view)).from_buffer_copy(view)
        else:
            buf = (ctypes.c_uint8 * len(view)).from_buffer(view)
        if int(lc.llama_state_seq_set_data(self.ctx, buf, len(state), seq)) == 0:
            self.clear_sequence(seq)
            return False
        return True

    def close(self) -> None:
        """Free the context and the model."""
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None
