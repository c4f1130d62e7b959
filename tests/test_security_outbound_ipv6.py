"""Issue 9's outbound policy on IPv6 forms that carry an IPv4 address (tasks/outbound.py
`embedded_ipv4`): mapped, compatible, translated, NAT64 (RFC 6052), 6to4 and Teredo addresses
are checked as the IPv4 address they lead to. Refusals are proven at the check (literal hosts,
the http node with a literal, or a resolver stub); nothing is connected to."""

import ipaddress
import socket
from typing import Any

import pytest

from tasks.outbound import OutboundPolicy, OutboundRefused, PolicyResolver, embedded_ipv4
from tests.conftest import CallNode, make_settings
from tests.test_security_outbound import (
    METADATA,
    NO_PRIVATE,
    MakeResources,
    StubResolver,
    real_resources,
    refused,
)

__all__ = ["real_resources"]  # the fixture, shared

# (case, IPv6 address, the IPv4 addresses it carries)
EMBEDDINGS = [
    ("mapped", "::ffff:169.254.169.254", [METADATA]),
    ("compatible", "::169.254.169.254", [METADATA]),
    ("compatible loopback", "::7f00:1", ["127.0.0.1"]),
    ("translated (SIIT)", "::ffff:0:a9fe:a9fe", [METADATA]),
    ("NAT64 well-known", "64:ff9b::a9fe:a9fe", [METADATA]),
    ("NAT64 well-known, dotted", "64:ff9b::169.254.169.254", [METADATA]),
    ("NAT64 local-use /96", "64:ff9b:1:abcd::a9fe:a9fe", [METADATA]),
    ("NAT64 local-use /48", "64:ff9b:1:a9fe:a9:fe00::",
     [METADATA, "254.169.254.0", "169.254.0.0", "0.0.0.0"]),
    ("NAT64 local-use /64", "64:ff9b:1:0:a9:fea9:fe00:0",
     [METADATA, "254.0.0.0"]),
    ("NAT64 local-use, u octet set", "64:ff9b:1:0:100:a9fe:a9fe:a9fe", [METADATA]),
    ("6to4", "2002:7f00:1::1", ["127.0.0.1"]),
    ("6to4 metadata", "2002:a9fe:a9fe::", [METADATA]),
    ("Teredo (client XOR-ed)", "2001:0:4136:e378:8000:63bf:5601:5601",
     ["65.54.227.120", METADATA]),
    ("loopback is not compatible", "::1", []),
    ("unspecified is not compatible", "::", []),
    ("documentation", "2001:db8::a9fe:a9fe", []),
    ("ordinary global", "2606:4700::6810:84e5", []),
    ("IPv4 itself", "169.254.169.254", []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("address", "carried"), [c[1:] for c in EMBEDDINGS], ids=[c[0] for c in EMBEDDINGS]
)
def test_embedded_ipv4(address: str, carried: list[str]) -> None:
    assert [str(v4) for v4 in embedded_ipv4(ipaddress.ip_address(address))] == carried


DENY_LOOPBACK = {"OUTBOUND_DENY": "127.0.0.0/8"}
# (case, settings, literal host refused)
REFUSED = [
    ("NAT64 to metadata", {}, "64:ff9b::a9fe:a9fe"),
    ("NAT64 dotted", {}, "64:ff9b::169.254.169.254"),
    ("local NAT64 /96 to metadata", {}, "64:ff9b:1::a9fe:a9fe"),
    ("local NAT64 /48 to metadata", {}, "64:ff9b:1:a9fe:a9:fe00::"),
    ("6to4 of 127.0.0.1", DENY_LOOPBACK, "2002:7f00:1::1"),
    ("6to4 of metadata", {}, "2002:a9fe:a9fe::1"),
    ("Teredo client metadata", {}, "2001:0:4136:e378:8000:63bf:5601:5601"),
    ("compatible metadata", {}, "::a9fe:a9fe"),
    ("translated metadata", {}, "::ffff:0:a9fe:a9fe"),
    ("mapped cloud metadata", {}, "::ffff:100.100.100.200"),
    ("NAT64 of Alibaba metadata", {}, "64:ff9b::6464:64c8"),
    ("6to4 of a private address", NO_PRIVATE, "2002:a00:1::1"),
    ("NAT64 of CGNAT", NO_PRIVATE, "64:ff9b::100.64.0.1"),
    ("Teredo of RFC 1918", NO_PRIVATE, "2001:0:4136:e378:8000:63bf:f5ff:fffe"),
    ("6to4 of a denied alias", {"OUTBOUND_DENY": "127.0.0.2"}, "2002:7f00:2::"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "host"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
async def test_embedded_ipv4_is_refused(settings: dict[str, Any], host: str) -> None:
    policy = OutboundPolicy.from_settings(make_settings(**settings))
    assert await refused(policy.resolve(host, 80)) == host


# (case, settings, host) that pass the check: only checked, never connected to
PASSED = [
    ("NAT64 of a public address", {}, "64:ff9b::5db8:d822"),
    ("6to4 of a public address", {}, "2002:5db8:d822::1"),
    ("6to4 of loopback while private is allowed", {}, "2002:7f00:1::1"),
    ("allowed outright", {"OUTBOUND_ALLOW": "64:ff9b::/96"}, "64:ff9b::a9fe:a9fe"),
    ("allowed local NAT64 prefix", {"OUTBOUND_ALLOW": "64:ff9b:1::/48"},
     "64:ff9b:1:a9fe:a9:fe00::"),
    ("its IPv4 allowed", {**NO_PRIVATE, "OUTBOUND_ALLOW": "10.0.0.0/8"}, "2002:a00:1::1"),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "host"), [c[1:] for c in PASSED], ids=[c[0] for c in PASSED])
def test_embedded_ipv4_that_is_not_denied_passes(settings: dict[str, Any], host: str) -> None:
    policy = OutboundPolicy.from_settings(make_settings(**settings))
    policy.check(host, 80, [host])


async def test_http_node_refuses_an_embedded_metadata_address(
    call_node: CallNode, real_resources: MakeResources
) -> None:
    for url, host in [
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "64:ff9b::a9fe:a9fe"),
        ("http://[2002:a9fe:a9fe::1]/", "2002:a9fe:a9fe::1"),
        ("http://[::ffff:0:a9fe:a9fe]/", "::ffff:0:a9fe:a9fe"),
    ]:
        call = call_node("http", {"httpUrl": url}, resources=real_resources())
        assert await refused(call) == host


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "::a9fe:a9fe"])
async def test_a_name_resolving_to_an_embedded_metadata_address_is_refused(address: str) -> None:
    resolver = PolicyResolver(OutboundPolicy(), StubResolver(address))
    assert await refused(resolver.resolve("rebind.example", 80)) == "rebind.example"

    async def lookup(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        return [(socket.AF_INET6, "2606:4700::6810:84e5"), (socket.AF_INET6, address)]

    policy = OutboundPolicy(lookup=lookup)
    assert await refused(policy.resolve("rebind.example", 3306)) == "rebind.example"


def test_protected_ports_hold_for_an_embedded_loopback() -> None:
    policy = OutboundPolicy(protected_ports=[4200])
    for address in ("::7f00:1", "2002:7f00:1::1", "64:ff9b::7f00:1"):
        with pytest.raises(OutboundRefused):
            policy.check(address, 4200, [address])
        policy.check(address, 4201, [address])
