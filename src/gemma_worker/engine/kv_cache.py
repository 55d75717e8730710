"""The one owner of slots and their KV caches (engine thread only).

:class:`KVCacheManager` holds the slot pool (:class:`~gemma_worker.core.scheduling.SlotPool`
decides which slot is free, busy or keeps a reusable cache), the session caches saved on
disk (:class:`~gemma_worker.engine.kv_files.KVFiles`), and makes every llama.cpp memory call
(copy, clear, trim, save, load a sequence). The engine asks it for slots and gives them back;
it never changes KV memory itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gemma_worker.core.scheduling import Acquired, CachedPrefix, SlotPool
from gemma_worker.engine.config import EngineConfig
from gemma_worker.engine.kv_files import KVFiles
from gemma_worker.engine.llama import LlamaModel

log = logging.getLogger(__name__)

#: Shorter caches are not saved to disk: processing them again takes well under half a
#: second, less than the disk churn of saving every one-shot request's cache is worth.
KV_DISK_MIN_TOKENS = 256


class KVCacheManager:
    """Slots, their KV caches in memory and on disk, for one loaded model."""

    def __init__(self, model: LlamaModel, config: EngineConfig, model_path: Path) -> None:
        self._model = model
        # With a KV buffer per slot, busy slots are kept together (see SlotPool).
        self._pool = SlotPool(config.parallel, compact=not config.kernels.kv_unified)
        self._files: KVFiles | None = None
        if config.kv_dir is not None and config.kv_disk_bytes > 0:
            size = model_path.stat().st_size
            fingerprint = (  # what a saved cache must match to be loaded
                f"{model_path.resolve()}|{size}|{model.n_ctx_seq}|{config.n_ctx}|"
                f"{config.kernels.flash_attn}|{config.kernels.kv_unified}|{model.n_swa}"
            )
            self._files = KVFiles(config.kv_dir, config.kv_disk_bytes, fingerprint)

    # --- what is where ----------------------------------------------------------------------
    @property
    def n_free(self) -> int:
        """Slots no request runs in."""
        return self._pool.n_free

    @property
    def n_empty(self) -> int:
        """Free slots that hold no cache."""
        return self._pool.n_empty

    def cached(self, scope: str | None, special: bool) -> dict[int, CachedPrefix]:
        """The reusable caches of ``scope`` (and prompt kind), by slot."""
        return dict(self._pool.cached(scope, special))

    def saved_tokens(self, session: str | None) -> tuple[int, ...] | list[int] | None:
        """The tokens of ``session``'s cache saved on disk, if there is one."""
        if session is None or self._files is None:
            return None
        return self._files.tokens(session)

    # --- taking and giving back slots -------------------------------------------------------
    def acquire(self, scores: Mapping[int, int], session: str | None) -> Acquired:
        """A free slot for a request of ``session`` (see :meth:`SlotPool.acquire`); the cache
        it overwrites goes to disk first if it is another session's latest."""
        acquired = self._pool.acquire(scores)
        assert acquired is not None, "acquire is only called with a free slot"
        self._give_up(acquired.slot, acquired.cache, session)
        return acquired

    def copy(self, src: int, dst: int) -> None:
        """Copy ``src``'s cache into ``dst`` (which is cleared first)."""
        self._model.copy_sequence(src, dst)

    def clear(self, slot: int) -> None:
        """Empty ``slot``'s cache."""
        self._model.clear_sequence(slot)

    def window_covers(self, slot: int, n_tokens: int) -> bool:
        """Whether ``slot``'s cache cut to its first ``n_tokens`` could continue."""
        return self._model.window_covers(slot, n_tokens)

    def keep_prefix(self, slot: int, n_tokens: int) -> bool:
        """Cut ``slot``'s cache to its first ``n_tokens``; whether the model allows it."""
        return self._model.keep_prefix(slot, n_tokens)

    def restore(self, slot: int, session: str | None) -> list[int] | None:
        """Load ``session``'s saved cache into ``slot``; its tokens, or ``None``."""
        model = self._model
        if self._files is None or session is None or model.copy_pending(slot):
            return None
        entry = self._files.take(session)
        if entry is None:
            return None
        if not model.load_sequence(slot, entry.state):
            log.info("a saved session cache did not load; processing the history again")
            return None
        return entry.tokens

    def release(self, slot: int, cache: CachedPrefix | None = None) -> None:
        """``slot`` is free again; it keeps ``cache`` for later requests, or is emptied."""
        if cache is None:
            self._model.clear_sequence(slot)
        self._pool.release(slot, cache)

    def close_gap(self, session_of: Callable[[int], str | None]) -> tuple[int, int] | None:
        """Move the highest busy slot's request into a gap between busy slots (a KV copy of a
        few ms that saves a forward pass on every step the gap would last); the move
        ``(src, dst)`` for the engine to follow, or ``None``. ``session_of(slot)``: the
        session of the request running there."""
        move = self._pool.gap_move()
        if move is None:
            return None
        src, dst = move
        self._give_up(dst, self._pool.relocate(src, dst), session_of(src))
        self._model.copy_sequence(src, dst)
        self._model.clear_sequence(src)
        return move

    def forget(self, session: str) -> None:
        """Drop every cache of ``session``, in memory and on disk."""
        if self._files is not None:
            self._files.forget(session)
        for slot in self._pool.forget(session):
            self._model.clear_sequence(slot)

    def save_idle_sessions(self) -> None:
        """Save each idle session's latest cache to disk (the worker is stopping)."""
        for slot, cache in self._pool.caches():
            if cache.session is not None and self._pool.holder(cache.session) == slot:
                self._stash(slot, cache)

    # --- disk -------------------------------------------------------------------------------
    def _give_up(self, slot: int, old: CachedPrefix | None, session: str | None) -> None:
        """``slot``'s cache ``old`` is about to be overwritten for ``session``'s request: if it
        is another session's latest cache, it goes to disk."""
        other = None if old is None or old.session == session else old.session
        if old is not None and other is not None and self._pool.holder(other) is None:
            self._stash(slot, old)

    def _stash(self, slot: int, cache: CachedPrefix) -> None:
        """Save the session cache that ``slot`` holds to disk (when enabled)."""
        key = cache.session
        if (
            key is None
            or self._files is None
            or len(cache.tokens) < KV_DISK_MIN_TOKENS
            or self._model.copy_pending(slot)
        ):
            return
        t0 = time.perf_counter()
        self._files.save(key, list(cache.tokens), self._model.save_sequence(slot))
        log.debug(
            "session cache saved",
            extra={"tokens": len(cache.tokens), "ms": round((time.perf_counter() - t0) * 1e3, 1)},
        )
