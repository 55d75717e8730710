"""API keys: parsing, storage as digests, constant-time lookup (sans-I/O).

Keys are kept only as SHA-256 digests. A presented token is hashed and compared with every
known digest using :func:`hmac.compare_digest`, without stopping at a match, so the time taken
does not depend on which key (if any) matched. A key is identified in logs, metrics, rate
limits and session ownership by :func:`key_id`, a short prefix of its digest, never by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

#: Shortest accepted API key: shorter ones are too easy to guess.
MIN_KEY_LENGTH = 16

_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


class KeyConfigError(ValueError):
    """The configured keys are unusable (message is safe to print: it never holds a key)."""


def _digest(key: str) -> bytes:
    # surrogatepass: a token with lone surrogates (from JSON) is just a key that never matches
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def key_id(digest: bytes) -> str:
    """The public name of a key: ``key-`` and the first 12 hex digits of its SHA-256."""
    return "key-" + digest.hex()[:12]


def parse_key_file(text: str) -> list[bytes]:
    """Digests from a key file: one key, or ``sha256:<hex digest>``, per line; blank lines and
    ``#`` comments are skipped."""
    digests = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            digests.append(_entry_digest(line, f"key file line {number}"))
    return digests


def _entry_digest(entry: str, where: str) -> bytes:
    """A configured key, or ``sha256:<hex digest>`` of one."""
    hashed = _HASHED.match(entry)
    if hashed:
        return bytes.fromhex(hashed.group(1))
    if entry.startswith("sha256:"):
        raise KeyConfigError(f"{where}: a sha256 entry needs 64 hex digits")
    return _key_digest(entry, where)


def _key_digest(key: str, where: str) -> bytes:
    if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
        raise KeyConfigError(
            f"{where}: an API key needs at least {MIN_KEY_LENGTH} characters and no spaces"
        )
    return _digest(key)


class KeyRing:
    """The accepted API keys. Empty means authentication is off."""

    def __init__(self, digests: Iterable[bytes] = ()) -> None:
        self._digests = list(dict.fromkeys(digests))

    @classmethod
    def build(cls, keys: Iterable[str], key_file_text: str | None = None) -> KeyRing:
        """Keys from settings (plain) and an optional key file's text."""
        digests = [_entry_digest(k, "GEMMA_API_KEYS") for k in keys]
        if key_file_text is not None:
            file_digests = parse_key_file(key_file_text)
            if not file_digests:
                raise KeyConfigError("the API key file holds no key")
            digests += file_digests
        return cls(digests)

    @property
    def enabled(self) -> bool:
        """Whether requests must present a key."""
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, token: str | None) -> str | None:
        """The :func:`key_id` of ``token`` if it is a known key, else ``None``."""
        if not token:
            return None
        presented = _digest(token)
        found: bytes | None = None
        for digest in self._digests:
            if hmac.compare_digest(presented, digest):
                found = digest
        return None if found is None else key_id(found)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
