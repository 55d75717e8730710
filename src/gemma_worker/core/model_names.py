"""Model names as clients send them, checked and resolved (sans-I/O).

A name is only ever looked up among the models the registry found; it never becomes a path.
Resolution: the exact id, then an alias, then Ollama's ``name:tag`` (``x:latest`` is ``x``;
``x:tag`` may name the file ``x-tag``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: What a model id (a file's stem) may look like: no path separators, no leading dot.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
#: An alias or a requested name may also carry one Ollama tag (``gemma3:270m``).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}(:[A-Za-z0-9][A-Za-z0-9._+-]{0,63})?")


def is_model_id(text: str) -> bool:
    """Whether ``text`` can be a model's id (a GGUF file's stem)."""
    return _ID.fullmatch(text) is not None


def is_model_name(text: str) -> bool:
    """Whether ``text`` can name a model (an id or an alias, with at most one tag)."""
    return _NAME.fullmatch(text) is not None


def shown(name: str) -> str:
    """``name`` as an error message may quote it: short, printable, no line breaks."""
    clean = "".join(c if c.isprintable() else "?" for c in name[:64])
    return clean + ("..." if len(name) > 64 else "")


def resolve(name: str, ids: frozenset[str], aliases: Mapping[str, str]) -> str | None:
    """The id ``name`` means among ``ids`` (with ``aliases``: alias -> id), or ``None``."""
    if not is_model_name(name):
        return None
    found = _lookup(name, ids, aliases)
    if found is not None or ":" not in name:
        return found
    base, tag = name.split(":", 1)
    if tag == "latest":
        return _lookup(base, ids, aliases)
    return _lookup(f"{base}-{tag}", ids, aliases)


def _lookup(name: str, ids: frozenset[str], aliases: Mapping[str, str]) -> str | None:
    if name in ids:
        return name
    target = aliases.get(name)
    return target if target in ids else None
