import pytest

from gemma_worker.core.model_names import is_model_id, is_model_name, resolve, shown

IDS = frozenset({"gemma-3-270m-q4_k_m", "gemma-q8", "qwen-7b", "llama3"})
ALIASES = {"gemma3:270m": "gemma-3-270m-q4_k_m", "fast": "gemma-q8", "gone": "missing"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gemma-q8", "gemma-q8"),  # exact
        ("fast", "gemma-q8"),  # alias
        ("gemma3:270m", "gemma-3-270m-q4_k_m"),  # alias with a tag
        ("gemma-q8:latest", "gemma-q8"),  # Ollama's default tag
        ("fast:latest", "gemma-q8"),
        ("qwen:7b", "qwen-7b"),  # name:tag names the file name-tag
        ("llama3:8b", None),  # no such file
        ("gone", None),  # an alias of a model that is not there
        ("GEMMA-Q8", None),  # names are exact
        ("", None),
    ],
)
def test_names_resolve_exact_then_alias_then_tag(name: str, expected: str | None) -> None:
    assert resolve(name, IDS, ALIASES) == expected


@pytest.mark.parametrize(
    "name",
    [
        "../gemma-q8",
        "/etc/passwd",
        "gemma-q8/../../x",
        "gemma\x00q8",
        ".hidden",
        "a:b:c",
        "gemma q8",
        "x" * 300,
        "gemma-q8\n",
        "C:\\models\\x",
    ],
)
def test_hostile_names_resolve_to_nothing(name: str) -> None:
    assert not is_model_name(name)
    assert resolve(name, IDS | {name}, {name: "gemma-q8"}) is None


def test_ids_are_file_stems_without_tags() -> None:
    assert is_model_id("gemma-3-270m-q4_k_m")
    assert not is_model_id("gemma3:270m")
    assert is_model_name("gemma3:270m")


def test_shown_names_are_short_and_printable() -> None:
    assert shown("a\nb\x00c") == "a?b?c"
    assert shown("y" * 100) == "y" * 64 + "..."
