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
from dataclasses import dataclass

#: Shortest accepted API key: shorter ones are too easy to guess.
MIN_KEY_LENGTH = 16

_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What a key may do beyond inference: ``admin`` (load and unload models, see file
    details); ``models``: the only models it may use, by id or alias (``None``: any)."""

    admin: bool = False
    models: frozenset[str] | None = None


#: The grant of a worker without keys (everything: it serves loopback only).
OPEN_GRANT = KeyGrant(admin=True)


def _parse_entry(entry: str, where: str) -> tuple[bytes, KeyGrant]:
    """``<key or sha256:digest> [admin] [models=<name>|<name>...]``."""
    key, *attrs = entry.split()
    admin, models = False, None
    for attr in attrs:
        if attr == "admin":
            admin = True
        elif attr.startswith("models=") and attr.removeprefix("models="):
            models = frozenset(n for n in attr.removeprefix("models=").split("|") if n)
        else:
            raise KeyConfigError(
                f"{where}: unknown key option {attr[:32]!r} (known: admin, models=a|b)"
            )
    return _entry_digest(key, where), KeyGrant(admin, models)


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
    return [digest for digest, _ in parse_key_entries(text)]


def parse_key_entries(text: str) -> list[tuple[bytes, KeyGrant]]:
    """Digests and grants from a key file (see :func:`parse_key_file`); each line may add
    ``admin`` and ``models=a|b`` after the key."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            entries.append(_parse_entry(line, f"key file line {number}"))
    return entries


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

    def __init__(
        self, digests: Iterable[bytes] = (), grants: dict[bytes, KeyGrant] | None = None
    ) -> None:
        self._digests = list(dict.fromkeys(digests))
        self._grants = {key_id(d): g for d, g in (grants or {}).items()}

    @classmethod
    def build(cls, keys: Iterable[str], key_file_text: str | None = None) -> KeyRing:
        """Keys from settings and an optional key file's text. Each entry is a key (or
        ``sha256:<digest>``), optionally followed by ``admin`` and ``models=a|b``."""
        entries = [_parse_entry(k, "GEMMA_API_KEYS") for k in keys]
        if key_file_text is not None:
            file_entries = parse_key_entries(key_file_text)
            if not file_entries:
                raise KeyConfigError("the API key file holds no key")
            entries += file_entries
        return cls((d for d, _ in entries), dict(entries))

    def grant(self, key: str | None) -> KeyGrant:
        """What the key with id ``key`` may do (everything when keys are off)."""
        if not self.enabled:
            return OPEN_GRANT
        return self._grants.get(key or "", KeyGrant()) if key else KeyGrant()

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
