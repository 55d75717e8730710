"""The GGUF header reader: real files, and the malformed ones a models folder may hold."""

import struct
from pathlib import Path

import pytest

from gemma_worker.engine.gguf_header import GgufError, read_gguf_header
from gemma_worker.engine.memory import memory_need, parse_meminfo
from gemma_worker.engine.model_files import resolve_model_path


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def gguf(entries: list[tuple[str, int, bytes]], version: int = 3) -> bytes:
    """A GGUF file's head: ``entries`` are (key, value type, packed value)."""
    out = b"GGUF" + struct.pack("<IQQ", version, 0, len(entries))
    for key, kind, value in entries:
        out += _string(key) + struct.pack("<I", kind) + value
    return out


SMALL = [
    ("general.architecture", 8, _string("gemma3")),
    ("gemma3.block_count", 4, struct.pack("<I", 18)),
    ("gemma3.attention.head_count", 4, struct.pack("<I", 4)),
    ("gemma3.attention.head_count_kv", 4, struct.pack("<I", 1)),
    ("gemma3.embedding_length", 4, struct.pack("<I", 640)),
    ("gemma3.attention.key_length", 4, struct.pack("<I", 256)),
    ("gemma3.attention.value_length", 4, struct.pack("<I", 256)),
    ("gemma3.vocab_size", 4, struct.pack("<I", 1000)),
    ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + _string("a") + _string("b")),
    ("per_layer", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, 7, 3)),
]


def test_a_written_header_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf(SMALL))
    header = read_gguf_header(path)
    assert header.architecture == "gemma3"
    assert header.arch_int("block_count") == 18
    assert header.metadata["per_layer"] == (1, 7, 3)
    assert "tokenizer.ggml.tokens" not in header.metadata  # string arrays are skipped
    assert header.quantization == "unknown"
    need = memory_need(header, file_size=1000, n_ctx_seq=1024, n_seq=2)
    assert need.kv_cache == 18 * 1 * (256 + 256) * 2 * 1024 * 2
    assert need.weights == 1000
    assert need.total == need.weights + need.kv_cache + need.other


def test_the_embedded_models_header_sizes_its_kv_cache() -> None:
    path = resolve_model_path(None)
    header = read_gguf_header(path)
    assert header.architecture == "gemma3"
    assert header.arch_int("block_count") == 18
    assert header.quantization == "Q4_K_M"
    need = memory_need(header, path.stat().st_size, n_ctx_seq=4096, n_seq=4)
    # 18 layers x 1 KV head x (256 + 256) x f16 x 16k cells: 288 MiB at most.
    assert need.kv_cache == 18 * 512 * 2 * 4096 * 4
    assert "GiB" in need.describe(1 << 30)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a GGUF"),
        (b"PK\x03\x04 a zip file", "not a GGUF"),
        (b"GGUF", "ends inside"),
        (gguf(SMALL)[:60], "ends inside"),
        (gguf(SMALL, version=9), "version 9"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 40), "implausible"),
        (gguf([("k", 8, struct.pack("<Q", 1 << 60))]), "implausible"),
        (gguf([("k", 42, b"")]), "unknown value type"),
        (gguf([("k", 9, struct.pack("<IQ", 4, 1 << 50))]), "implausible"),
    ],
)
def test_malformed_files_are_refused_without_their_path(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "secret-dir" / "bad.gguf"
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(GgufError, match=message) as err:
        read_gguf_header(path)
    assert "secret-dir" not in str(err.value)


def test_a_missing_file_is_refused_without_its_path(tmp_path: Path) -> None:
    with pytest.raises(GgufError) as err:
        read_gguf_header(tmp_path / "nowhere" / "x.gguf")
    assert "nowhere" not in str(err.value)


def test_meminfo_reads_available_memory() -> None:
    text = "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:  2048 kB\n"
    assert parse_meminfo(text) == 2048 * 1024
    assert parse_meminfo("MemTotal: 1 kB\n") is None
