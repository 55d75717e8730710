"""Allowed hosts and trusted origins, on plain data: the DNS-rebinding defence."""

from __future__ import annotations

import pytest

from gemma_worker.core.hosts import (
    AllowedHosts,
    HostPatternError,
    OriginPolicy,
    is_loopback,
    origin_host,
    split_authority,
)


def keyless(bind: str = "127.0.0.1", machine: str = "box") -> AllowedHosts:
    return AllowedHosts.for_worker(None, keys_enabled=False, bind_host=bind, machine_name=machine)


@pytest.mark.parametrize(
    ("authority", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:3125", "localhost"),
        ("127.0.0.1:3125", "127.0.0.1"),
        ("[::1]:3125", "::1"),
        ("[::1]", "::1"),
        ("gemma.example.", "gemma.example"),
        ("::1", None),  # an IPv6 literal needs its brackets
        ("[127.0.0.1]", None),
        ("a b", None),
        ("user@localhost", None),
        ("localhost:99999999", None),
        ("", None),
        ("localhost:", None),
        ("-bad-.example", None),
    ],
)
def test_the_host_part_of_an_authority(authority: str, name: str | None) -> None:
    assert split_authority(authority) == name


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("localhost:3125", True),
        ("localhost", True),
        ("app.localhost:3125", True),
        ("127.0.0.1:3125", True),
        ("127.1.2.3", True),
        ("[::1]:3125", True),
        ("LOCALHOST", True),
        ("localhost.:3125", True),
        ("attacker.test", False),
        ("attacker.test:3125", False),
        ("localhost.attacker.test", False),
        ("127.0.0.1.attacker.test", False),
        ("10.0.0.5:3125", False),
        ("[::2]", False),
        ("box", False),  # the machine's name is for wildcard binds only
        ("", False),
        (None, False),
        ("localhost:3125, attacker.test", False),
    ],
)
def test_keyless_default_is_loopback_only(host: str | None, ok: bool) -> None:
    assert keyless().allows(host) is ok


def test_answers_are_remembered_within_a_bound() -> None:
    hosts = keyless()
    for i in range(2000):  # a client sending a new Host each time
        assert hosts.allows(f"h{i}.attacker.test") is False
        assert hosts.allows("localhost:8000") is True  # the same answer, remembered or not
    assert len(hosts._seen) <= 256


def test_keyless_default_adds_the_bound_address() -> None:
    hosts = keyless("10.0.0.5")
    assert hosts.allows("10.0.0.5:3125")
    assert hosts.allows("localhost:3125")
    assert not hosts.allows("10.0.0.6:3125")
    assert not hosts.allows("attacker.test")
    named = keyless("gemma.lan")
    assert named.allows("gemma.lan:3125") and not named.allows("other.lan")


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "[::]"])
def test_a_wildcard_bind_serves_every_address_and_the_machines_name(bind: str) -> None:
    hosts = keyless(bind, machine="GemmaBox")
    for ok in ("10.0.0.5:3125", "192.168.1.20", "[fe80::1]:3125", "gemmabox:3125", "localhost"):
        assert hosts.allows(ok), ok
    assert not hosts.allows("attacker.test:3125")


def test_with_keys_every_host_unless_a_list_is_set() -> None:
    keyed = AllowedHosts.for_worker(None, keys_enabled=True, bind_host="0.0.0.0", machine_name="b")
    assert keyed.allow_all and keyed.allows("anything.example") and keyed.allows(None)
    listed = AllowedHosts.for_worker(
        ["gemma.example"], keys_enabled=True, bind_host="0.0.0.0", machine_name="b"
    )
    assert listed.allows("gemma.example:443")
    assert not listed.allows("localhost:3125")  # a list replaces the defaults


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("*", "whatever.example", True),
        (".example.com", "example.com", True),
        (".example.com", "a.b.example.com:8443", True),
        (".example.com", "badexample.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("Gemma.Example", "gemma.example", True),
        ("gemma.example", "www.gemma.example", False),
        ("10.0.0.0/8", "10.1.2.3:80", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("[::1]", "[::1]:1", True),
        ("::1", "[::1]", True),
        ("fd00::/8", "[fd12::5]:3125", True),
        ("10.0.0.5", "10.0.0.5", True),
        ("10.0.0.5", "10.0.0.50", False),
        ("10.0.0.0/8", "10.evil.example", False),  # a name is not an address
    ],
)
def test_patterns(pattern: str, host: str, ok: bool) -> None:
    assert AllowedHosts([pattern]).allows(host) is ok


@pytest.mark.parametrize(
    "bad", ["", "http://gemma.example", "gemma.example:443", "a b", "10.0.0.0/99", "*.", "*x.com"]
)
def test_a_bad_pattern_is_refused(bad: str) -> None:
    with pytest.raises(HostPatternError):
        AllowedHosts([bad])


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://localhost:5173", "localhost"),
        ("https://[::1]", "::1"),
        ("HTTPS://Gemma.Example", "gemma.example"),
        ("null", None),
        ("file://", None),
        ("chrome-extension://abc", None),
        ("http://a.example/path", None),
    ],
)
def test_the_host_of_an_origin(origin: str, host: str | None) -> None:
    assert origin_host(origin) == host


@pytest.mark.parametrize(
    ("origin", "cors", "ok"),
    [
        (None, [], True),  # not a browser
        ("http://localhost:5173", [], True),
        ("https://127.0.0.1", [], True),
        ("http://[::1]:8080", [], True),
        ("https://evil.example", [], False),
        ("http://localhost.evil.example", [], False),
        ("http://127.0.0.1.evil.example:80", [], False),
        ("null", [], False),
        ("https://app.example", ["https://app.example"], True),
        ("https://app.example", ["https://app.example/"], True),
        ("https://other.example", ["https://app.example"], False),
        ("https://any.example", ["*"], True),
    ],
)
def test_origins_without_keys(origin: str | None, cors: list[str], ok: bool) -> None:
    assert OriginPolicy(cors, keyless()).allows(origin) is ok


def test_a_page_on_the_workers_own_name_is_trusted_only_when_that_name_is_allowed() -> None:
    # Origin == Host is what DNS rebinding produces: on its own it proves nothing.
    assert not OriginPolicy([], keyless()).allows("http://gemma.example")
    public = AllowedHosts(["gemma.example"])
    assert OriginPolicy([], public).allows("https://gemma.example:8443")
    assert not OriginPolicy([], public).allows("https://evil.example")


def test_pages_on_any_address_are_not_trusted_by_a_wildcard_bind() -> None:
    """Every address may be a Host (a request naming one reached it), but a page on some
    address could be anyone's: only the names the worker was given make a page trusted."""
    hosts = keyless("0.0.0.0", machine="gemmabox")
    pages = OriginPolicy([], hosts)
    assert hosts.allows("203.0.113.9")
    assert not pages.allows("http://203.0.113.9")
    assert not pages.allows("http://[2001:db8::1]:8080")
    assert pages.allows("http://gemmabox:3125") and pages.allows("http://localhost:5173")


def test_with_every_host_allowed_pages_are_trusted_from_loopback_only() -> None:
    keyed = AllowedHosts.for_worker(None, keys_enabled=True, bind_host="0.0.0.0", machine_name="b")
    pages = OriginPolicy([], keyed)
    assert pages.allows("http://localhost:5173")
    assert not pages.allows("https://evil.example")
    assert OriginPolicy(["*"], keyed).allows("https://evil.example")  # unless CORS says so
    listed = OriginPolicy([], AllowedHosts(["*", "gemma.example"]))
    assert listed.allows("https://gemma.example") and not listed.allows("https://evil.example")


def test_an_ipv4_mapped_address_is_its_ipv4_address() -> None:
    assert keyless().allows("[::ffff:127.0.0.1]:3125")
    assert not keyless().allows("[::ffff:10.0.0.1]:3125")


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("0.0.0.0", False)],
)
def test_loopback_binds(bind: str, loopback: bool) -> None:
    assert is_loopback(bind) is loopback
