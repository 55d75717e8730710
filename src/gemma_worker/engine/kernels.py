"""Which llama.cpp compute paths the worker uses: batch-invariant ones, or the fastest.

A sequence's logits are *batch-invariant* when they do not depend on which other sequences
share its ``llama_decode`` batch. Five of llama.cpp's CPU choices break that, each for speed:

- ``sgemm_single_rows``: llamafile's sgemm serves one-row (single-sequence) batches too
  (the worker's patched build, ``scripts/build-llama.sh``). Off, a lone sequence goes to
  ggml's ``vec_dot``, which sums in another order than sgemm does for 2+ rows.
- ``repack_weights``: weights repacked for the CPU's SIMD width; their gemv (under 4 rows)
  and gemm (4+ rows) kernels round differently.
- ``tiled_matmul``: ggml's tiled K-quant matmul, which takes over from 8 rows.
- ``flash_attn``: attention kernels whose reduction order depends on the batch's shape.
- ``kv_unified``: one KV buffer for every slot; a sequence's cells interleave with its
  neighbours' and attention runs over a padded view of all of them.

Two of them are process-wide (ggml reads them from the environment once, at first use), so
every model in a process must agree on those.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any

_TILED_ENV = "GGML_CPU_TILED_MM"
_SGEMM_ENV = "GEMMA_SGEMM_ONE_ROW"


class KernelConflictError(Exception):
    """A model asked for process-wide kernel choices other than the ones already in force."""


@dataclass(frozen=True, slots=True)
class KernelChoices:
    """The five choices; :meth:`deterministic` and :meth:`fast` are the two modes."""

    sgemm_single_rows: bool
    repack_weights: bool
    tiled_matmul: bool
    flash_attn: bool
    kv_unified: bool

    @classmethod
    def deterministic(cls) -> KernelChoices:
        """Batch-invariant: a greedy output does not depend on the other requests."""
        return cls(
            sgemm_single_rows=True,
            repack_weights=False,
            tiled_matmul=False,
            flash_attn=False,
            kv_unified=False,
        )

    @classmethod
    def fast(cls) -> KernelChoices:
        """llama.cpp's fast kernels. The unified KV buffer stays off: with prefix caching every
        slot keeps its cache, and in one shared buffer each request's attention would span
        all of them (measured: a 2,000-token prompt 1.8x slower once a few caches are kept)."""
        return cls(
            sgemm_single_rows=False,
            repack_weights=True,
            tiled_matmul=True,
            flash_attn=True,
            kv_unified=False,
        )

    @classmethod
    def for_mode(cls, deterministic: bool, **overrides: bool | None) -> KernelChoices:
        """The mode's choices, with any override that is not ``None`` applied."""
        base = cls.deterministic() if deterministic else cls.fast()
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def batch_invariant(self) -> bool:
        """Whether these choices keep every sequence's logits independent of its batch."""
        return self == KernelChoices.deterministic()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``GET /``)."""
        return {**asdict(self), "batch_invariant": self.batch_invariant}

    def apply_process_wide(self) -> None:
        """Put the process-wide choices into the environment, before ggml first reads them;
        :class:`KernelConflictError` if this process already runs with other ones."""
        wanted = {
            _TILED_ENV: "1" if self.tiled_matmul else "0",
            _SGEMM_ENV: "1" if self.sgemm_single_rows else "0",
        }
        for name, value in wanted.items():
            current = _applied.get(name)
            if current is not None and current != value:
                raise KernelConflictError(
                    f"{name}={current} is already in force in this process; "
                    "models in one process must share the deterministic setting"
                )
        for name, value in wanted.items():
            os.environ[name] = value
            _applied[name] = value


#: The process-wide values this process has put in force (ggml reads each only once).
_applied: dict[str, str] = {}
