"""Which network addresses kompressor may connect to on a job's behalf (the SSRF guard).

One rule for every door a spec opens to the network: URL sources (the worker's fetch), the
finish webhook (the operator) and a job's own S3 endpoint (the operator, before any request).
Loopback, private, link-local, metadata and other non-public addresses are refused, in every IPv4
and IPv6 spelling, unless an allow-list re-admits them; a policy without `public` (the storage
endpoints') refuses public addresses too, so only what its allow-list names is reachable.
`address_allowed` is pure; `vetted_addresses` resolves a name and refuses it when any of its
addresses is refused (so DNS cannot smuggle a private address in beside a public one);
`vetted_url` does so for the host and port of an http(s) URL; `connection_guard` judges every
connection an S3 client opens (kompressor_s3's `vet`).

The rule, in detail: REFUSED_IPV4 (this-network, RFC 1918, CGNAT, loopback, link-local with
169.254.169.254, IETF/documentation/benchmarking ranges, multicast, reserved, broadcast); IPv6 outside
global unicast 2000::/3 or in REFUSED_IPV6; IPv6 forms carrying an IPv4 address (::ffff:a.b.c.d,
NAT64 64:ff9b::/96, 6to4 2002::/16) judged by that address. Python's `is_global` differs between
patch releases, so the tables are the rule and the standard library only adds refusals.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from kompressor.deadline import getaddrinfo_within

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED_IPV4: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "0.0.0.0/8",  # this network, with the unspecified address
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT shared space (also Alibaba's metadata address 100.100.100.200)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, with the cloud metadata address 169.254.169.254
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments (also Oracle's metadata address 192.0.0.192)
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, with the broadcast address 255.255.255.255
    )
)

GLOBAL_UNICAST_IPV6 = ipaddress.IPv6Network("2000::/3")
REFUSED_IPV6: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        # Inside global unicast 2000::/3:
        "2001::/23",  # IETF protocol assignments, with Teredo 2001::/32 and benchmarking
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        # Outside it, refused by that rule already; listed to be explicit:
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0:0/96",  # SIIT IPv4-translated
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "fc00::/7",  # unique local, with the metadata address fd00:ec2::254
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


class AddressRefused(ValueError):
    """A host whose address the policy refuses, or that does not resolve (`transient` when the
    name server only failed for now, so a later lookup may succeed)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class AddressPolicy:
    """Which refused addresses a worker may reach anyway: those inside `allow_networks`
    (e.g. `AddressPolicy.allowing("10.20.0.0/16")` for an in-cluster image server). Without
    `public`, only addresses inside `allow_networks` are allowed, public ones included."""

    allow_networks: tuple[IPNetwork, ...] = ()
    public: bool = True

    def __post_init__(self) -> None:
        networks = tuple(ipaddress.ip_network(network) for network in self.allow_networks)
        object.__setattr__(self, "allow_networks", networks)

    @classmethod
    def allowing(cls, *networks: str | IPNetwork) -> AddressPolicy:
        return cls(allow_networks=tuple(ipaddress.ip_network(network) for network in networks))

    @classmethod
    def only(cls, *networks: str | IPNetwork) -> AddressPolicy:
        """Nothing but the addresses inside `networks` (none when there are none)."""
        return cls(allow_networks=tuple(ipaddress.ip_network(network) for network in networks), public=False)

    def allows(self, ip: IPAddress) -> bool:
        return any(ip.version == network.version and ip in network for network in self.allow_networks)


def address_allowed(ip: IPAddress | str, policy: AddressPolicy) -> bool:
    """May a worker connect to `ip`? Pure; see the module docstring for the rule."""
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return False  # not an address we can judge
    if policy.allows(ip):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            ip = ipaddress.IPv6Address(ip.packed)  # a zone changes nothing about where it leads
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return policy.allows(mapped) or (policy.public and _public_ipv4(mapped))
        if not policy.public:
            return False
        if ip in _NAT64:
            return _public_ipv4(ipaddress.IPv4Address(ip.packed[-4:]))
        if ip in _SIX_TO_FOUR:
            return _public_ipv4(ipaddress.IPv4Address(ip.packed[2:6]))
        return _public_ipv6(ip)
    return policy.public and _public_ipv4(ip)


def _public_ipv4(ip: ipaddress.IPv4Address) -> bool:
    if any(ip in network for network in REFUSED_IPV4):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_private)


def _public_ipv6(ip: ipaddress.IPv6Address) -> bool:
    if ip not in GLOBAL_UNICAST_IPV6 or any(ip in network for network in REFUSED_IPV6):
        return False
    return not (ip.is_multicast or ip.is_private or ip.is_link_local or ip.is_site_local)


def vetted_addresses(host: str, port: int, policy: AddressPolicy, deadline: float) -> list[tuple[int, tuple]]:
    """(family, sockaddr) of every address of `host`, all allowed; else AddressRefused. The lookup
    ends by `deadline` (time.monotonic()) or raises TimeoutError; a failed lookup raises gaierror."""
    infos = getaddrinfo_within(host, port, deadline)
    found = [(family, sockaddr) for family, _type, _proto, _name, sockaddr in infos]
    for _family, sockaddr in found:
        if not address_allowed(sockaddr[0], policy):
            kind = "a non-public address" if policy.public else "an address outside the allow-list"
            raise AddressRefused(f"{host} resolves to {sockaddr[0]}, {kind}")
    return found


Guard = Callable[[str, int], list[tuple[int, tuple]]]
"""(host, port) -> the (family, sockaddr) a connection may go to; AddressRefused (or a failed
lookup's error) when it may go nowhere."""


def connection_guard(policy: AddressPolicy, lookup_seconds: float = 10.0) -> Guard:
    """`vetted_addresses` for each connection, its lookup bounded by `lookup_seconds`: a client that
    connects to the address returned sends nothing to a name that resolves elsewhere later."""

    def vet(host: str, port: int) -> list[tuple[int, tuple]]:
        return vetted_addresses(host, port, policy, time.monotonic() + lookup_seconds)

    return vet


def vetted_url(url: str, policy: AddressPolicy, lookup_seconds: float = 10.0) -> list[tuple[int, tuple]]:
    """`vetted_addresses` of an http(s) URL's host and port (80 or 443 when it names none). A URL
    without a host, with user info or with a port that is no number is refused as it stands."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise AddressRefused(f"{url!r} has a port that is no number from 0 to 65535") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise AddressRefused(f"{url!r} is not an http(s) URL with a host")
    if "@" in parts.netloc:
        raise AddressRefused(f"{url!r} carries user info; credentials never come from a URL")
    try:
        return vetted_addresses(parts.hostname, port, policy, time.monotonic() + lookup_seconds)
    except socket.gaierror as exc:
        transient = exc.errno == socket.EAI_AGAIN
        raise AddressRefused(f"{parts.hostname} does not resolve: {exc}", transient=transient) from None
    except TimeoutError:
        raise AddressRefused(
            f"{parts.hostname} did not resolve within {lookup_seconds:g} s", transient=True
        ) from None
