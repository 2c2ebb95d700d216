"""The provider network policy and the Host header parsing, address by address."""

from __future__ import annotations

import ipaddress

import pytest

from app.auth.dependencies import LOOPBACK_HOSTS, host_name
from app.core.netpolicy import HostRefused, NetworkPolicy
from app.embedding.provider_service import _origin

STRICT = NetworkPolicy()
OPEN = NetworkPolicy.parse(["0.0.0.0/0", "::/0", "169.254.169.254", "metadata.internal"])


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "::ffff:169.254.169.254",
        "0.0.0.0",
        "::",
    ],
)
def test_link_local_and_metadata_are_refused_whatever_is_listed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    for policy in (STRICT, OPEN):
        reason = policy.refusal(address, ip)
        assert reason is not None and ("always refused" in reason or "loopback" in reason)
    assert "always refused" in (OPEN.refusal("metadata.internal", ip) or "")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "fc00::1",
        "100.64.0.1",
        "198.18.0.1",
        "240.0.0.1",
        "224.0.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_loopback_and_private_need_listing(address: str) -> None:
    ip = ipaddress.ip_address(address)
    reason = STRICT.refusal(address, ip)
    assert reason is not None and "PROVIDER_ALLOWED_HOSTS" in reason
    assert OPEN.refusal(address, ip) is None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert STRICT.refusal(address, ipaddress.ip_address(address)) is None


def test_entries_are_addresses_networks_or_names() -> None:
    policy = NetworkPolicy.parse(["127.0.0.1", " 10.0.0.0/8 ", "[::1]", "Ollama.", ""])
    assert policy.refusal("x", ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal("x", ipaddress.ip_address("127.0.0.2")) is not None
    assert policy.refusal("x", ipaddress.ip_address("10.9.8.7")) is None
    assert policy.refusal("x", ipaddress.ip_address("::1")) is None
    assert policy.refusal("ollama", ipaddress.ip_address("172.18.0.5")) is None
    assert policy.refusal("other", ipaddress.ip_address("172.18.0.5")) is not None
    assert (
        STRICT.allowing("http://ollama:11434").refusal("ollama", ipaddress.ip_address("172.18.0.5"))
        is None
    )


async def test_check_url_resolves_names() -> None:
    with pytest.raises(HostRefused, match="localhost .*127.0.0.1|localhost .*::1"):
        await STRICT.check_url("http://localhost:11434")
    await NetworkPolicy.parse(["localhost"]).check_url("http://localhost:11434")
    with pytest.raises(HostRefused, match="does not resolve"):
        await STRICT.check_url("http://no-such-host.invalid/v1")
    with pytest.raises(HostRefused, match="always refused"):
        await OPEN.check_url("http://169.254.169.254/latest")


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8000", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("evil.example", "evil.example"),
        ("localhost.:8000", "localhost"),
        ("", ""),
    ],
)
def test_host_names_from_host_headers(header: str, host: str) -> None:
    assert host_name(header) == host
    assert (host in LOOPBACK_HOSTS) == (host in ("localhost", "127.0.0.1", "[::1]"))


def test_origins_decide_where_a_key_goes() -> None:
    assert _origin("http://a.example/v1") == _origin("http://A.example:80/other")
    assert _origin("https://a.example/v1") != _origin("http://a.example/v1")
    assert _origin("http://a.example:8080") != _origin("http://a.example")
    assert _origin(None) is None
