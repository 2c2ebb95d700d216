"""Where a provider may send requests: never link-local or metadata addresses, and loopback or
private addresses only when PROVIDER_ALLOWED_HOSTS lists them.

The check runs twice: when a base_url is stored (so the admin hears why at once) and on every
connection the provider opens (`GuardedBackend`), against the addresses that connection really
uses, so a host name that resolves elsewhere later (DNS rebinding) is refused too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpcore

from app.core.errors import ValidationError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused whatever the settings say: link-local (where the cloud metadata services live) and
# the metadata addresses some clouds put elsewhere.
ALWAYS_REFUSED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata 169.254.169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud metadata (classic)
        "0.0.0.0/8",  # "this host": reaches local services on some systems
        "::/128",
    )
)
# Reachable only when listed: loopback, RFC 1918 / ULA private ranges, carrier-grade NAT.
NEEDS_LISTING: tuple[Network, ...] = tuple(
    ipaddress.ip_network(net) for net in ("100.64.0.0/10", "198.18.0.0/15")
)
FIX = "PROVIDER_ALLOWED_HOSTS"


class HostRefused(ValidationError):
    """A provider URL whose host the network policy refuses; names the field and the fix."""

    def __init__(self, reason: str):
        super().__init__(f"base_url: {reason}", detail=[{"field": "base_url", "message": reason}])
        self.reason = reason


@dataclass(frozen=True)
class NetworkPolicy:
    """Which loopback or private destinations are allowed: listed networks and host names."""

    networks: tuple[Network, ...] = ()
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> NetworkPolicy:
        """From PROVIDER_ALLOWED_HOSTS entries: IP addresses, CIDR networks or host names."""
        networks: list[Network] = []
        names: set[str] = set()
        for raw in entries:
            entry = raw.strip().strip("[]").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(tuple(networks), frozenset(names))

    def allowing(self, url: str | None) -> NetworkPolicy:
        """This policy, plus the host of `url` (an operator's own setting, such as
        EMBEDDING_BASE_URL); link-local and metadata addresses stay refused."""
        host = urlsplit(url).hostname if url else None
        return self if not host else replace(self, names=self.names | {host.lower()})

    def refusal(self, host: str, address: Address) -> str | None:
        """Why `address` (which `host` resolved to) may not be reached, or None if it may."""
        address = _unmapped(address)
        shown = host if host == str(address) else f"{host} ({address})"
        if any(address in net for net in ALWAYS_REFUSED if net.version == address.version):
            return f"{shown} is a link-local or cloud metadata address, always refused"
        if not _needs_listing(address):
            return None
        if host.lower().rstrip(".") in self.names or any(
            address in net for net in self.networks if net.version == address.version
        ):
            return None
        entry = str(address) if host == str(address) else host
        example = "" if entry == "127.0.0.1" else f" (or {FIX}=127.0.0.1 for a local Ollama)"
        return f"{shown} is a loopback or private address; allow it with {FIX}={entry}{example}"

    def check_addresses(self, host: str, addresses: Iterable[Address]) -> None:
        """Raise HostRefused if any of the addresses may not be reached."""
        for address in addresses:
            reason = self.refusal(host, address)
            if reason is not None:
                raise HostRefused(reason)

    async def check_url(self, url: str) -> None:
        """Resolve the URL's host and check every address it gives; raise HostRefused."""
        host = urlsplit(url).hostname
        if not host:
            raise HostRefused("the URL has no host")
        self.check_addresses(host, await resolve(host, urlsplit(url).port or 443))


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _needs_listing(address: Address) -> bool:
    if address.is_loopback or address.is_private or address.is_reserved or address.is_multicast:
        return True
    return any(address in net for net in NEEDS_LISTING if net.version == address.version)


async def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an IP literal is itself); HostRefused if none."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise HostRefused(f"{host} does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise HostRefused(f"{host} does not resolve")
    return addresses


class PolicyRefused(httpcore.ConnectError):
    """A connection the network policy refused (httpx reports it as a ConnectError)."""

    def __init__(self, reason: str):
        super().__init__(f"refused by the network policy: {reason}")
        self.reason = reason


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, but every TCP connection goes to an address the policy
    allows, resolved here and connected to by address (TLS still verifies the host name)."""

    def __init__(self, policy: NetworkPolicy):
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await resolve(host, port)
            self.policy.check_addresses(host, addresses)
        except HostRefused as exc:
            raise PolicyRefused(exc.reason) from None
        last: Exception | None = None
        for address in addresses:  # every one was checked; the first that answers is used
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,  # noqa: ARG002 - httpcore's signature
        timeout: float | None = None,  # noqa: ARG002
        socket_options: Iterable[Any] | None = None,  # noqa: ARG002
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("refused by the network policy: Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def policy_refusal(exc: BaseException) -> str | None:
    """The network policy's reason, when that is what stopped a connection (httpx and the
    OpenAI SDK wrap it in their own errors)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PolicyRefused):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def guarded_client(policy: NetworkPolicy, **kwargs: Any) -> Any:
    """An httpx.AsyncClient whose connections obey `policy` (no proxies from the environment:
    a proxy would resolve the host itself, out of the policy's sight)."""
    import httpx

    transport = httpx.AsyncHTTPTransport()
    pool = transport._pool  # noqa: SLF001 - httpx offers no public hook for the network backend
    pool._network_backend = GuardedBackend(policy)  # noqa: SLF001
    return httpx.AsyncClient(transport=transport, trust_env=False, **kwargs)
