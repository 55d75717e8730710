"""The host names the worker answers to, and the browser origins it trusts (sans-I/O).

Why: after DNS rebinding, a web page on ``attacker.test`` reaches a worker on 127.0.0.1 with
``Host: attacker.test`` and ``Origin: http://attacker.test``; the browser thinks it talks to
the page's own server. Checking ``Host`` against the names the worker is meant to serve ends
that (Ollama's fix of CVE-2024-28224; Django's ``ALLOWED_HOSTS``, Vite's ``allowedHosts``).

Patterns (case-insensitive, never a port):

- ``*``: every host;
- ``.example.com``: ``example.com`` and all its subdomains; ``*.example.com``: subdomains only;
- ``127.0.0.0/8``, ``::1/128``: every IP literal in the network;
- ``10.0.0.5``, ``::1`` or ``[::1]``: that address; anything else: that exact name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Names that only ever mean this machine: a page served under them is served by it
#: (``*.localhost`` resolves to loopback in browsers, RFC 6761).
LOOPBACK_PATTERNS = ("localhost", "*.localhost", "127.0.0.0/8", "::1")

#: Every IP literal: a request naming an address reached that address, so no page on a
#: rebound name can send it (rebinding needs a name). Not so for a page's origin: a page on any
#: address could be anyone's, so these never make an origin trusted.
ANY_ADDRESS = ("0.0.0.0/0", "::/0")
_CATCH_ALLS = frozenset({"*", *ANY_ADDRESS})

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_AUTHORITY = re.compile(
    r"^(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::(?P<port>\d{1,5}))?$"
)


class HostPatternError(ValueError):
    """A pattern that is not a host name, address, network or wildcard (safe to print)."""


@dataclass(frozen=True, slots=True)
class _Pattern:
    """One parsed pattern: an exact name, a domain suffix, or a network."""

    name: str | None = None
    suffix: str | None = None  # ".example.com": matches a name ending with it
    bare_too: bool = False  # the suffix without its dot matches as well
    network: IPNetwork | None = None

    def matches(self, name: str, address: IPAddress | None) -> bool:
        if address is not None:
            return self.network is not None and address in self.network
        if self.name is not None:
            return name == self.name
        if self.suffix is not None:
            return name.endswith(self.suffix) or (self.bare_too and name == self.suffix[1:])
        return False


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # [::ffff:127.0.0.1] is 127.0.0.1
    return address


def parse_pattern(text: str) -> _Pattern | None:
    """``text`` as a pattern (``None`` for ``*``); :class:`HostPatternError` if it is none."""
    entry = text.strip().lower()
    if entry == "*":
        return None
    entry = entry.rstrip(".")
    if entry.startswith("[") and entry.endswith("]"):
        entry = entry[1:-1]
    if "/" in entry and "://" not in entry:
        try:
            return _Pattern(network=ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise HostPatternError(f"not an IP network: {text[:80]!r}") from None
    address = _address(entry)
    if address is not None:
        return _Pattern(network=ipaddress.ip_network(address))
    if entry.startswith("*.") and _NAME.match(entry[2:]):
        return _Pattern(suffix=entry[1:])
    if entry.startswith(".") and _NAME.match(entry[1:]):
        return _Pattern(suffix=entry, bare_too=True)
    if _NAME.match(entry):
        return _Pattern(name=entry)
    raise HostPatternError(
        f"not a host name, address, network, '.domain' or '*': {text[:80]!r} "
        "(host patterns have no scheme and no port)"
    )


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    address = _address(host.strip().strip("[]"))
    return address is not None and address.is_loopback


def split_authority(authority: str) -> str | None:
    """The host part of ``host[:port]`` or ``[v6][:port]``, lower-cased, without brackets and
    without a trailing dot; ``None`` if ``authority`` is not of that form."""
    found = _AUTHORITY.match(authority.strip().lower())
    if found is None:
        return None
    if found["v6"] is not None:
        try:
            ipaddress.IPv6Address(found["v6"])
        except ValueError:
            return None
        return found["v6"]
    name = found["name"].rstrip(".")
    return name if _NAME.match(name) or _address(name) is not None else None


def origin_host(origin: str) -> str | None:
    """The host of a browser ``Origin`` (``scheme://host[:port]``, http or https only)."""
    scheme, sep, authority = origin.strip().partition("://")
    if not sep or scheme.lower() not in {"http", "https"} or "/" in authority:
        return None
    return split_authority(authority)


#: How many ``Host`` values :class:`AllowedHosts` remembers.
_SEEN_MAX = 256


class AllowedHosts:
    """The host names requests may name in ``Host``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        """``patterns`` as in the module's docstring; :class:`HostPatternError` if one is
        not a pattern."""
        self.patterns = tuple(patterns)
        parsed = [parse_pattern(p) for p in self.patterns]
        self.allow_all = any(p is None for p in parsed)
        self._parsed = [p for p in parsed if p is not None]
        #: Answers by ``Host`` value: clients send the same one again and again (emptied
        #: when full, so random values cannot grow it).
        self._seen: dict[str, bool] = {}

    @classmethod
    def for_worker(
        cls,
        configured: Collection[str] | None,
        *,
        keys_enabled: bool,
        bind_host: str,
        machine_name: str,
    ) -> AllowedHosts:
        """The ``configured`` list, or the default: with API keys every host (the keys protect
        the worker); without, the loopback names and the names of the bound address: that
        address itself, or for a wildcard bind (``0.0.0.0``, ``::``) every IP literal and
        ``machine_name`` (this machine's host name)."""
        if configured is not None:
            return cls(configured)
        if keys_enabled:
            return cls(["*"])
        patterns = list(LOOPBACK_PATTERNS)
        bind = bind_host.strip().strip("[]").lower()
        address = _address(bind)
        if bind in {"", "0.0.0.0", "::"}:
            patterns.extend(ANY_ADDRESS)
            if _NAME.match(machine_name.lower()):
                patterns.append(machine_name.lower())
        elif address is not None or _NAME.match(bind):
            patterns.append(bind)
        return cls(patterns)

    def trusted_for_pages(self) -> AllowedHosts:
        """The hosts whose pages (browser origins) are trusted: these, named one by one; a
        catch-all (``*``, every address) names nobody, so it trusts no page. Left with none
        (every host allowed, as with API keys by default), the loopback names."""
        named = [p for p in self.patterns if p.strip().lower() not in _CATCH_ALLS]
        return AllowedHosts(named or LOOPBACK_PATTERNS)

    def allows_name(self, name: str) -> bool:
        """Whether a host name (as :func:`split_authority` returns it) is allowed."""
        if self.allow_all:
            return True
        address = _address(name)
        return any(p.matches(name, address) for p in self._parsed)

    def allows(self, host_header: str | None) -> bool:
        """Whether a request with this ``Host`` header value may be served (a missing or
        malformed one may not, unless every host is allowed)."""
        if self.allow_all:
            return True
        if not host_header:
            return False
        known = self._seen.get(host_header)
        if known is None:
            name = split_authority(host_header)
            known = name is not None and self.allows_name(name)
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[host_header] = known
        return known


class OriginPolicy:
    """The browser origins whose pages may use the worker: on the WebSocket, for CORS, and
    for Ollama's bodies sent without a JSON content type."""

    def __init__(self, cors_origins: Collection[str], hosts: AllowedHosts) -> None:
        """``cors_origins``: origins accepted as they are (``*``: all); beyond them a page is
        accepted when its origin's host is one that ``hosts`` names
        (:meth:`AllowedHosts.trusted_for_pages`)."""
        self.cors_origins = frozenset(o.rstrip("/") for o in cors_origins)
        self.hosts = hosts.trusted_for_pages()

    def allows(self, origin: str | None) -> bool:
        """Whether a request with this ``Origin`` may be served; no ``Origin`` is not a
        browser page, so it may."""
        if origin is None:
            return True
        if "*" in self.cors_origins or origin.rstrip("/") in self.cors_origins:
            return True
        host = origin_host(origin)
        return host is not None and self.hosts.allows_name(host)
