import os
import time
from pathlib import Path

from gemma_worker.engine.kv_files import KVFiles


def test_saved_cache_comes_back_once(tmp_path: Path) -> None:
    files = KVFiles(tmp_path / "kv", 10_000, "model-a")
    files.save("s1", [2, 10, 11], b"state-bytes")
    entry = files.take("s1")
    assert entry is not None
    assert (entry.tokens, entry.state) == ([2, 10, 11], b"state-bytes")
    assert files.take("s1") is None  # taken: it lives in a slot again


def test_a_cache_for_another_model_or_context_is_ignored(tmp_path: Path) -> None:
    KVFiles(tmp_path, 10_000, "model-a").save("s1", [1], b"x")
    assert KVFiles(tmp_path, 10_000, "model-b").take("s1") is None
    assert list(tmp_path.glob("*.kv")) == []  # and dropped


def test_damaged_file_is_ignored(tmp_path: Path) -> None:
    files = KVFiles(tmp_path, 10_000, "m")
    files.save("s1", [1, 2], b"state")
    (path,) = tmp_path.glob("*.kv")
    path.write_bytes(path.read_bytes()[:10])
    assert files.take("s1") is None


def test_total_size_is_bounded_oldest_first(tmp_path: Path) -> None:
    files = KVFiles(tmp_path, 2_500, "m")
    for i, name in enumerate(["old", "mid", "new"]):
        files.save(name, [1] * 10, b"x" * 1000)
        stamp = time.time() - 100 + i
        for p in tmp_path.glob("*.kv"):
            if p.stat().st_mtime > stamp:
                os.utime(p, (stamp, stamp))
    assert files.take("old") is None
    assert files.take("mid") is not None and files.take("new") is not None


def test_forget_and_names_do_not_hold_the_key(tmp_path: Path) -> None:
    files = KVFiles(tmp_path, 10_000, "m")
    files.save("../../etc/passwd", [1], b"x")
    (path,) = tmp_path.glob("*.kv")
    assert path.parent == tmp_path and "passwd" not in path.name
    files.forget("../../etc/passwd")
    assert list(tmp_path.glob("*.kv")) == []
