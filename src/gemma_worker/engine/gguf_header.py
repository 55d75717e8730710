"""A GGUF file's metadata, read without llama.cpp (to check a file and size a model before
it is loaded).

Only the key/value section at the file's head is read; arrays of numbers are kept when short,
other arrays (the vocabulary) are skipped. Errors never name the file's path.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

_MAGIC = b"GGUF"
#: GGUF value types: struct format of each scalar; 8 is a string, 9 an array.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
#: Limits that no real file exceeds: a hostile header cannot make us read gigabytes.
_MAX_KEYS = 1 << 16
_MAX_STRING = 1 << 24
_MAX_ARRAY = 1 << 24
_KEEP_ARRAY = 4096

Value = int | float | bool | str | tuple[int | float, ...]

#: ``general.file_type`` values (llama.h's ``llama_ftype``) as quantization names.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}  # fmt: skip


class GgufError(Exception):
    """The file is not a GGUF model this worker can read (message names no path)."""


@dataclass(frozen=True, slots=True)
class GgufHeader:
    """The metadata of a GGUF file."""

    version: int
    n_tensors: int
    metadata: dict[str, Value]

    @property
    def architecture(self) -> str:
        """``general.architecture`` (e.g. ``gemma3``)."""
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GgufError("the file has no general.architecture")
        return arch

    @property
    def quantization(self) -> str:
        """The weights' type from ``general.file_type`` (``Q4_K_M``), or ``unknown``."""
        kind = self.metadata.get("general.file_type")
        return _FILE_TYPES.get(kind, "unknown") if isinstance(kind, int) else "unknown"

    def arch_int(self, key: str, default: int = 0) -> int:
        """``<architecture>.<key>`` as an int (the largest entry of a per-layer array)."""
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        if isinstance(value, tuple):
            return int(max(value, default=default))
        return int(value) if isinstance(value, int | float) else default


class _Reader:
    """Reads values from the file's bytes (mapped: the vocabulary's 262k strings are skipped
    by offset, not read one call each)."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> int | float | bool:
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise GgufError("the file ends inside its header")
        value: int | float | bool = struct.unpack_from("<" + fmt, self.data, self.at)[0]
        self.at += size
        return value

    def _span(self, n: int) -> int:
        start = self.at
        if start + n > len(self.data):
            raise GgufError("the file ends inside its header")
        self.at += n
        return start

    def string(self) -> str:
        n = int(self.take("Q"))
        if n > _MAX_STRING:
            raise GgufError("the file's header holds an implausible string")
        start = self._span(n)
        return bytes(self.data[start : start + n]).decode("utf-8", "replace")

    def value(self, kind: int) -> Value | None:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise GgufError(f"the file's header has an unknown value type {kind}")
        item = int(self.take("I"))
        n = int(self.take("Q"))
        if n > _MAX_ARRAY:
            raise GgufError("the file's header holds an implausible array")
        if item in _SCALARS and item != 7:
            fmt = _SCALARS[item]
            start = self._span(struct.calcsize(fmt) * n)
            if n <= _KEEP_ARRAY:
                return tuple(struct.unpack_from(f"<{n}{fmt}", self.data, start))
            return None
        if item == _STRING:
            unpack, data = struct.unpack_from, self.data
            for _ in range(n):
                (length,) = unpack("<Q", data, self.at)
                self._span(8 + length)
            return None
        for _ in range(n):
            self.value(item)
        return None


def read_gguf_header(path: Path) -> GgufHeader:
    """The header of the GGUF file at ``path``; :class:`GgufError` if it is not one."""
    try:
        with path.open("rb") as f:
            if f.read(4) != _MAGIC:
                raise GgufError("the file is not a GGUF model (wrong magic bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(_Reader(data))
    except OSError as exc:
        raise GgufError(f"the file cannot be read ({exc.strerror or 'I/O error'})") from exc
    except (struct.error, ValueError) as exc:
        raise GgufError("the file's header is malformed") from exc


def _parse(r: _Reader) -> GgufHeader:
    r.at = 4
    version = int(r.take("I"))
    if version not in (2, 3):
        raise GgufError(f"GGUF version {version} is not supported")
    n_tensors = int(r.take("Q"))
    n_kv = int(r.take("Q"))
    if n_kv > _MAX_KEYS:
        raise GgufError("the file's header holds an implausible number of keys")
    metadata: dict[str, Value] = {}
    for _ in range(n_kv):
        key = r.string()
        value = r.value(int(r.take("I")))
        if value is not None:
            metadata[key] = value
    return GgufHeader(version, n_tensors, metadata)
