"""Idle sessions' KV caches on disk, so a session resumed after its slot was taken, or after a
restart, skips processing its history again.

One file per session: a header (format version and the model/context fingerprint it is valid
for), the session's tokens, then llama.cpp's sequence state. Files are named by a hash of the
session id, written atomically, deleted once loaded back (the cache lives in a slot again) or
when the session is deleted or expires, and bounded in total size (oldest dropped first).
Used on the engine thread only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from gemma_worker.private_files import open_private, private_dir

log = logging.getLogger(__name__)

_MAGIC = b"GWKV"
_VERSION = 1
_HEAD = struct.Struct("<4sI32sI")  # magic, version, fingerprint, n_tokens


@dataclass(frozen=True, slots=True)
class KVEntry:
    """A saved session cache: its tokens and the llama.cpp sequence state."""

    tokens: list[int]
    state: memoryview


class KVFiles:
    """A directory of saved session caches, at most ``max_bytes`` in total."""

    def __init__(self, directory: Path, max_bytes: int, fingerprint: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._fingerprint = hashlib.sha256(fingerprint.encode()).digest()
        private_dir(directory)

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".kv")

    def save(self, key: str, tokens: list[int], state: bytes | memoryview) -> None:
        """Store ``key``'s cache (replacing an older one), then keep within the size budget."""
        if len(state) + 4 * len(tokens) > self.max_bytes:
            return
        path = self._path(key)
        tmp = path.with_suffix(".tmp")
        try:
            with os.fdopen(open_private(tmp), "wb") as f:
                f.write(_HEAD.pack(_MAGIC, _VERSION, self._fingerprint, len(tokens)))
                f.write(struct.pack(f"<{len(tokens)}i", *tokens))
                f.write(state)
            tmp.replace(path)
        except OSError:
            log.exception("could not save a session's KV cache")
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        self._trim()

    def take(self, key: str) -> KVEntry | None:
        """Load and delete ``key``'s cache; ``None`` if there is none that fits this model."""
        path = self._path(key)
        try:
            # One buffer, read in place and never copied: states run to tens of MB.
            with path.open("rb") as f:
                data = bytearray(os.fstat(f.fileno()).st_size)
                f.readinto(data)
        except FileNotFoundError:
            return None
        except OSError:
            log.exception("could not read a session's KV cache")
            return None
        self.forget(key)
        if len(data) < _HEAD.size:
            return None
        magic, version, fingerprint, n_tokens = _HEAD.unpack_from(data)
        end = _HEAD.size + 4 * n_tokens
        if (magic, version, fingerprint) != (_MAGIC, _VERSION, self._fingerprint) or len(
            data
        ) <= end:
            return None
        tokens = list(struct.unpack_from(f"<{n_tokens}i", data, _HEAD.size))
        return KVEntry(tokens, memoryview(data)[end:])

    def tokens(self, key: str) -> list[int] | None:
        """The tokens of ``key``'s saved cache (read from its header, the state stays on
        disk); ``None`` if there is none that fits this model."""
        try:
            with self._path(key).open("rb") as f:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return None
                magic, version, fingerprint, n_tokens = _HEAD.unpack(head)
                if (magic, version, fingerprint) != (_MAGIC, _VERSION, self._fingerprint):
                    return None
                data = f.read(4 * n_tokens)
        except OSError:
            return None
        if len(data) < 4 * n_tokens:
            return None
        return list(struct.unpack(f"<{n_tokens}i", data))

    def forget(self, key: str) -> None:
        """Delete ``key``'s saved cache, if any."""
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def _trim(self) -> None:
        files = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".kv"):
                st = entry.stat()
                files.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size
