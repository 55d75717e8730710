import hashlib

import pytest

from gemma_worker.core.auth import (
    KeyConfigError,
    KeyRing,
    bearer_token,
    key_id,
    parse_key_file,
)

KEY = "k" * 16 + "-one"
OTHER = "o" * 16 + "-two"


def test_off_without_keys() -> None:
    ring = KeyRing.build([])
    assert not ring.enabled
    assert ring.identify(KEY) is None


def test_identifies_known_keys_by_a_digest_prefix() -> None:
    ring = KeyRing.build([KEY, OTHER])
    found = ring.identify(KEY)
    assert found == key_id(hashlib.sha256(KEY.encode()).digest())
    assert found is not None and KEY not in found
    assert ring.identify(OTHER) not in {None, found}
    for bad in (None, "", KEY + "x", KEY[:-1], KEY.upper()):
        assert ring.identify(bad) is None


def test_key_file_takes_keys_and_hashes() -> None:
    digest = hashlib.sha256(OTHER.encode()).hexdigest()
    text = f"# comment\n\n  {KEY}  \nsha256:{digest.upper()}\n"
    ring = KeyRing.build([], text)
    assert len(ring) == 2
    assert ring.identify(KEY) and ring.identify(OTHER)
    assert ring.identify(f"sha256:{digest}") is None  # the hash line is not itself a key


@pytest.mark.parametrize(
    "text", ["tiny-key\n", "sha256:abc\n", "has a blank in it!!\n", "# only comments\n"]
)
def test_unusable_key_files_are_refused_without_echoing_keys(text: str) -> None:
    with pytest.raises(KeyConfigError) as info:
        KeyRing.build([], text)
    secret = text.strip()
    assert secret.startswith("#") or secret not in str(info.value)


def test_parse_key_file_line_numbers() -> None:
    with pytest.raises(KeyConfigError, match="line 2"):
        parse_key_file(f"{KEY}\ntoo-short\n")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        (None, None),
        ("", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_a_hash_in_the_env_list_is_a_hash_not_a_key() -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    ring = KeyRing.build([f"sha256:{digest}"])
    assert ring.identify(KEY) is not None
    assert ring.identify(f"sha256:{digest}") is None


def test_a_token_with_lone_surrogates_is_just_wrong() -> None:
    assert KeyRing.build([KEY]).identify("\ud800" + KEY) is None
