"""The outbound policy: which hosts a node may open a connection to.

Every host a workflow or request supplies (`httpUrl` and its redirects, `mysqlHost`,
`emailSmtpHost`) is resolved once, every resolved address is checked, and the connection goes
to a checked address, so there is no DNS-rebinding window. The base URLs the operator configures
(OPENAI/ESIOS/Climatiq/Twilio, `SMTP_HOST`, the environment's proxies) are trusted. The service's
own API port and the embedded Prefect API are refused on every local address, whatever
OUTBOUND_ALLOW_PRIVATE or OUTBOUND_ALLOW say.
"""

import asyncio
import ipaddress
import logging
import socket
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from config import Settings
from errors import NodeExecutionError

logger = logging.getLogger(__name__)

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Lookup = Callable[[str, int], Awaitable[list[tuple[socket.AddressFamily, str]]]]

DEFAULT_DENY = (
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "metadata.google.internal",
    "100.100.100.200",
    "fd00:ec2::254",
)
PRIVATE = (
    "127.0.0.0/8",
    "::1/128",
    "::/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
)
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class OutboundRefused(NodeExecutionError):
    """Outbound connection refused by policy."""

    def __init__(self, host: str) -> None:
        super().__init__(f"Outbound connection to {host} refused by policy", retryable=False)
        self.host = host


def _host(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


def _ip(text: str) -> IP | None:
    """The address `text` spells, IPv4-mapped IPv6 as its IPv4 address; None for a name."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT, RFC 2765
# RFC 6052 §2.2: for each prefix length, the bytes of the 128-bit address holding the IPv4
# address (byte 8, bits 64-71, is the zero "u" octet) and the suffix bytes that must be zero.
_RFC6052 = {
    48: ((6, 7, 9, 10), range(11, 16)),
    56: ((7, 9, 10, 11), range(12, 16)),
    64: ((9, 10, 11, 12), range(13, 16)),
    96: ((12, 13, 14, 15), range(0)),
}


def embedded_ipv4(ip: IP) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, each checked like the address itself:
    IPv4-mapped `::ffff:a.b.c.d` (also `_ip`'s), IPv4-compatible `::a.b.c.d` (not `::`, `::1`),
    IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96`, the local-use NAT64 prefix
    `64:ff9b:1::/48` read in every RFC 6052 layout that may apply (the /96 one always, the /48,
    /56 and /64 ones when their u octet and suffix are zero: the network's prefix length is not
    known here, so each reading is checked), 6to4 `2002::/16`,
    and Teredo `2001::/32` (its server and its XOR-ed client)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    raw, value = ip.packed, int(ip)
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    elif (value >> 32 == 0 and value > 1) or ip in _IPV4_TRANSLATED or ip in _NAT64_WELL_KNOWN:
        found.append(ipaddress.IPv4Address(raw[12:]))
    elif ip in _NAT64_LOCAL:
        for where, suffix in _RFC6052.values():
            if where[0] == 12 or (raw[8] == 0 and not any(raw[i] for i in suffix)):
                found.append(ipaddress.IPv4Address(bytes(raw[i] for i in where)))
    elif ip.sixtofour is not None:
        found.append(ip.sixtofour)
    elif ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _legacy_ipv4(host: str) -> IP | None:
    """An IPv4 address in a spelling the C resolver accepts (2130706434, 0x7f000002, 127.1)."""
    if not host or not all(c in "0123456789abcdefx." for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class _Rules:
    hosts: frozenset[str]
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "_Rules":
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(_host(entry))
        return cls(frozenset(hosts), tuple(networks))

    def has_ip(self, ip: IP) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


@lru_cache(maxsize=512)
def _is_local(ip: IP) -> bool:
    """Whether `ip` is an address of this machine (loopback, unspecified, or bindable here)."""
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


def _endpoint(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url if "//" in url else f"//{url}")
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 80)
    except ValueError:
        return None
    return (_host(parts.hostname), port) if parts.hostname else None


async def _getaddrinfo(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys((family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos))


class OutboundPolicy:
    """OUTBOUND_DENY / OUTBOUND_ALLOW_PRIVATE / OUTBOUND_ALLOW, the trusted operator endpoints
    and the protected ones (API_PORT and the Prefect API on local addresses)."""

    def __init__(
        self,
        *,
        deny: Iterable[str] = (),
        allow: Iterable[str] = (),
        allow_private: bool = True,
        trusted: Iterable[tuple[str, int]] = (),
        protected_ports: Iterable[int] = (),
        lookup: Lookup = _getaddrinfo,
    ) -> None:
        self.deny = _Rules.parse([*DEFAULT_DENY, *deny])
        self.private = _Rules.parse(PRIVATE)
        self.allow = _Rules.parse(allow)
        self.allow_private = allow_private
        self.trusted = frozenset((_host(h), p) for h, p in trusted)
        self.protected_ports = frozenset(protected_ports)
        self.lookup = lookup

    @classmethod
    def from_settings(cls, settings: Settings) -> "OutboundPolicy":
        base_urls = (
            settings.OPENAI_BASE_URL,
            settings.ESIOS_BASE_URL,
            settings.CLIMATIQ_BASE_URL,
            settings.TWILIO_BASE_URL,
            *urllib.request.getproxies().values(),
        )
        trusted = [e for e in map(_endpoint, base_urls) if e is not None]
        prefect = [e for e in map(_endpoint, settings.outbound_protected_urls) if e is not None]
        return cls(
            deny=settings.OUTBOUND_DENY.split(","),
            allow=settings.OUTBOUND_ALLOW.split(","),
            allow_private=settings.OUTBOUND_ALLOW_PRIVATE,
            trusted=trusted,
            protected_ports={settings.API_PORT, *(port for _, port in prefect)},
        )

    def is_trusted(self, host: str, port: int) -> bool:
        return (_host(host), port) in self.trusted

    def check(self, host: str, port: int, addresses: Iterable[str]) -> None:
        """Raise OutboundRefused naming `host` unless every address of it may be connected to."""
        name = _host(host)
        ips = [ip for ip in map(_ip, addresses) if ip is not None]
        # an IPv6 address is checked together with every IPv4 address it embeds
        ips += [v4 for ip in ips for v4 in embedded_ipv4(ip) if not self.allow.has_ip(ip)]
        if port in self.protected_ports and any(_is_local(ip) for ip in ips):
            raise self._refuse(host, "protected service port")
        if (name, port) in self.trusted or name in self.allow.hosts:
            return
        if name in self.deny.hosts:
            raise self._refuse(host, "denied host")
        for ip in ips:
            if self.allow.has_ip(ip):
                continue
            if self.deny.has_ip(ip) or (not self.allow_private and self.private.has_ip(ip)):
                raise self._refuse(host, f"denied address {ip}")

    def check_literal(self, host: str, port: int) -> bool:
        """Check a host that is itself an address (any spelling); False when it is a name."""
        ip = _ip(host) or _legacy_ipv4(_host(host))
        if ip is None:
            return False
        self.check(host, port, [str(ip)])
        return True

    async def resolve(self, host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        """Resolve `host` once and check every address; (family, address) pairs to connect to.
        A failed lookup raises OSError (socket.gaierror) as connecting would."""
        if self.check_literal(host, port):
            ip = _ip(host) or _legacy_ipv4(_host(host))
            family = socket.AF_INET6 if ip and ip.version == 6 else socket.AF_INET
            return [(family, str(ip))]
        self.check(host, port, [])
        found = await self.lookup(host, port)
        self.check(host, port, [address for _, address in found])
        return found

    async def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A non-blocking socket connected to a checked address of `host` (for clients that
        accept one, keeping `host` for TLS); the last OSError when no address answers."""
        loop = asyncio.get_running_loop()
        error: OSError = OSError(f"no address for {host}")
        for family, address in await self.resolve(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(timeout):
                    await loop.sock_connect(sock, (address, port))
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error

    def _refuse(self, host: str, reason: str) -> OutboundRefused:
        logger.warning(
            "outbound connection to %s refused (%s)", host, reason, extra={"action": "outbound"}
        )
        return OutboundRefused(host)


class PolicyResolver(AbstractResolver):
    """aiohttp resolver of the shared client: the addresses aiohttp connects to are the ones
    checked here (aiohttp skips resolvers for IP literals: the transport checks those)."""

    def __init__(self, policy: OutboundPolicy, resolver: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.resolver = resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.policy.check(host, port, [])  # a denied name is not even looked up
        results = await self.resolver.resolve(host, port, family)
        self.policy.check(host, port, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self.resolver.close()
