"""Issue 9's outbound policy, attack by attack (tasks/outbound.py). No packet leaves the machine:
loopback aliases on the deny list (127.0.0.2) stand in for remote addresses, and the metadata
addresses are refused at the check (literals, or a resolver stub), never by a connection try."""

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiosmtpd.controller import Controller

from errors import NodeExecutionError
from tasks.context import Resources, open_resources
from tasks.outbound import OutboundPolicy, OutboundRefused, PolicyResolver
from tests.conftest import CallNode, make_settings
from tests.e2e import free_port

METADATA = "169.254.169.254"


class Upstream:
    """A raw HTTP server counting the connections it accepted; answers `{}` or a 302."""

    def __init__(self, host: str, location: str | None = None) -> None:
        self.host, self.location, self.connections = host, location, 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> "Upstream":
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if self.location:
            head = f"HTTP/1.1 302 Found\r\nLocation: {self.location}\r\nContent-Length: 2\r\n"
        else:
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        writer.write(f"{head}Connection: close\r\n\r\n{{}}".encode())
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


StartUpstream = Callable[..., Awaitable[Upstream]]
MakeResources = Callable[..., Resources]


@pytest.fixture
async def upstream() -> AsyncIterator[StartUpstream]:
    started: list[Upstream] = []

    async def start(host: str = "127.0.0.2", location: str | None = None) -> Upstream:
        server = await Upstream(host, location).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture
async def real_resources() -> AsyncIterator[MakeResources]:
    """`real_resources(**settings)`: Resources with the service's real HTTP client."""
    opened: list[Resources] = []

    def make(**settings: Any) -> Resources:
        opened.append(open_resources(make_settings(**settings)))
        return opened[-1]

    yield make
    for resources in opened:
        await resources.aclose()


async def refused(call: Awaitable[Any]) -> str:
    """The host named by the refusal `call` must end in (never retried)."""
    with pytest.raises(OutboundRefused) as info:
        await call
    assert isinstance(info.value, NodeExecutionError) and info.value.retryable is False
    assert str(info.value) == f"Outbound connection to {info.value.host} refused by policy"
    return info.value.host


DENY_ALIAS = {"OUTBOUND_DENY": "127.0.0.2"}
NO_PRIVATE = {"OUTBOUND_ALLOW_PRIVATE": False}
HTTP_REFUSED = [
    # (settings, url with {port} of a server on 127.0.0.2, host named in the refusal)
    (DENY_ALIAS, "http://127.0.0.2:{port}/", "127.0.0.2"),
    ({"OUTBOUND_DENY": "127.0.0.0/30"}, "http://127.0.0.2:{port}/", "127.0.0.2"),
    (DENY_ALIAS, "http://2130706434:{port}/", "2130706434"),
    (DENY_ALIAS, "http://0x7f000002:{port}/", "0x7f000002"),
    (DENY_ALIAS, "http://127.2:{port}/", "127.2"),
    (DENY_ALIAS, "http://[::ffff:127.0.0.2]:{port}/", "::ffff:127.0.0.2"),
    (DENY_ALIAS, "http://[::ffff:7f00:2]:{port}/", "::ffff:7f00:2"),
    ({"OUTBOUND_DENY": "127.0.0.0/8,::1"}, "http://localhost:{port}/", "localhost"),
    ({"OUTBOUND_DENY": "evil.example"}, "http://EVIL.example.:{port}/", "evil.example."),
    ({}, f"http://{METADATA}/latest/meta-data/", METADATA),
    ({}, "http://0xa9fea9fe/latest/meta-data/", "0xa9fea9fe"),
    ({}, "http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254"),
    ({}, "http://[fe80::1]/", "fe80::1"),
    ({}, "http://[fd00:ec2::254]/latest/meta-data/", "fd00:ec2::254"),
    ({}, "http://100.100.100.200/latest/meta-data/", "100.100.100.200"),
    ({}, "http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal"),
    ({}, "http://0.0.0.0:{port}/", "0.0.0.0"),
    (NO_PRIVATE, "http://127.0.0.2:{port}/", "127.0.0.2"),
    (NO_PRIVATE, "http://localhost:{port}/", "localhost"),
    (NO_PRIVATE, "http://[::1]:{port}/", "::1"),
    (NO_PRIVATE, "http://10.0.0.1/", "10.0.0.1"),
    (NO_PRIVATE, "http://172.16.0.1/", "172.16.0.1"),
    (NO_PRIVATE, "http://192.168.1.1/", "192.168.1.1"),
    (NO_PRIVATE, "http://100.64.0.1/", "100.64.0.1"),
    (NO_PRIVATE, "http://[fc00::1]/", "fc00::1"),
    (NO_PRIVATE, "http://[fd12:3456::1]/", "fd12:3456::1"),
    ({**NO_PRIVATE, "OUTBOUND_ALLOW": "127.0.0.3"}, "http://127.0.0.2:{port}/", "127.0.0.2"),
]


@pytest.mark.parametrize(("settings", "url", "host"), HTTP_REFUSED)
async def test_http_node_refuses(
    call_node: CallNode,
    upstream: StartUpstream,
    real_resources: MakeResources,
    settings: dict[str, Any],
    url: str,
    host: str,
) -> None:
    server = await upstream()
    resources = real_resources(**settings)
    call = call_node("http", {"httpUrl": url.format(port=server.port)}, resources=resources)
    assert await refused(call) == host
    assert server.connections == 0


ALLOWED = [
    ({}, "127.0.0.2"),
    ({**NO_PRIVATE, "OUTBOUND_ALLOW": "127.0.0.2"}, "127.0.0.2"),
    ({**NO_PRIVATE, "OUTBOUND_ALLOW": "127.0.0.0/24"}, "127.0.0.2"),
    ({"OUTBOUND_DENY": "127.0.0.0/8", "OUTBOUND_ALLOW": "127.0.0.2"}, "127.0.0.2"),
    ({"OUTBOUND_DENY": "127.0.0.2"}, "127.0.0.1"),
]


@pytest.mark.parametrize(("settings", "host"), ALLOWED)
async def test_http_node_allowed(
    call_node: CallNode,
    upstream: StartUpstream,
    real_resources: MakeResources,
    settings: dict[str, Any],
    host: str,
) -> None:
    server = await upstream(host)
    resources = real_resources(**settings)
    result = await call_node("http", {"httpUrl": server.url}, resources=resources)
    assert result["statusCode"] == 200 and server.connections == 1


@pytest.mark.parametrize(
    ("settings", "target", "host"),
    [
        (DENY_ALIAS, "http://127.0.0.2:{port}/", "127.0.0.2"),
        (DENY_ALIAS, "http://2130706434:{port}/", "2130706434"),
        ({}, f"http://{METADATA}/latest/meta-data/", METADATA),
        (NO_PRIVATE | {"OUTBOUND_ALLOW": "127.0.0.1"}, "http://10.1.2.3/", "10.1.2.3"),
    ],
)
async def test_redirect_to_a_denied_host_is_refused(
    call_node: CallNode,
    upstream: StartUpstream,
    real_resources: MakeResources,
    settings: dict[str, Any],
    target: str,
    host: str,
) -> None:
    denied = await upstream()
    redirect = await upstream("127.0.0.1", location=target.format(port=denied.port))
    resources = real_resources(**settings)
    call = call_node("http", {"httpUrl": f"{redirect.url}/moved"}, resources=resources)
    assert await refused(call) == host
    assert redirect.connections == 1 and denied.connections == 0


@pytest.mark.parametrize(
    "settings",
    [{}, {"OUTBOUND_ALLOW": "127.0.0.0/8,::1,localhost,0.0.0.0/8"}],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2", "[::ffff:127.0.0.1]"])
async def test_the_services_own_port_and_prefect_api_are_refused(
    call_node: CallNode,
    upstream: StartUpstream,
    real_resources: MakeResources,
    settings: dict[str, Any],
    host: str,
) -> None:
    api = await upstream("127.0.0.1")
    prefect = await upstream("127.0.0.1")
    resources = real_resources(
        API_PORT=api.port, OUTBOUND_PROTECTED_URLS=f"{prefect.url}/api", **settings
    )
    for port in (api.port, prefect.port):
        call = call_node("http", {"httpUrl": f"http://{host}:{port}/"}, resources=resources)
        assert await refused(call) == host.strip("[]")
    assert api.connections == prefect.connections == 0


async def test_prefect_api_url_setting_is_protected(
    call_node: CallNode, upstream: StartUpstream, real_resources: MakeResources
) -> None:
    prefect = await upstream("127.0.0.1")
    resources = real_resources(PREFECT_API_URL=f"http://localhost:{prefect.port}/api")
    call = call_node("http", {"httpUrl": f"{prefect.url}/api/flows"}, resources=resources)
    assert await refused(call) == "127.0.0.1"


def test_the_machines_own_addresses_count_as_local() -> None:
    """The protected ports hold on every address of this machine, not only on loopback."""
    addresses = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    policy = OutboundPolicy(protected_ports=[4200])
    for address in addresses:
        with pytest.raises(OutboundRefused):
            policy.check("me", 4200, [address])
    policy.check("me", 4201, list(addresses))  # other ports: private is allowed by default


class StubResolver(AbstractResolver):
    """Answers every name with `address`; records the names asked."""

    def __init__(self, address: str) -> None:
        self.address, self.asked = address, list[str]()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        result: ResolveResult = {
            "hostname": host,
            "host": self.address,
            "port": port,
            "family": family,
            "proto": 0,
            "flags": 0,
        }
        return [result]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "address", [METADATA, "100.100.100.200", "fd00:ec2::254", "::ffff:169.254.169.254", "0.0.0.0"]
)
async def test_a_name_resolving_to_a_metadata_address_is_refused(address: str) -> None:
    stub = StubResolver(address)
    resolver = PolicyResolver(OutboundPolicy(), stub)
    assert await refused(resolver.resolve("rebind.example", 80)) == "rebind.example"
    assert stub.asked == ["rebind.example"]

    async def lookup(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        return [(socket.AF_INET, "93.184.216.34"), (socket.AF_INET, address)]

    policy = OutboundPolicy(lookup=lookup)  # one bad address among good ones is enough
    assert await refused(policy.resolve("rebind.example", 3306)) == "rebind.example"


async def test_a_denied_name_is_not_even_looked_up() -> None:
    stub = StubResolver("93.184.216.34")
    resolver = PolicyResolver(OutboundPolicy(), stub)
    assert await refused(resolver.resolve("Metadata.Google.Internal.", 80))
    assert stub.asked == []


async def test_resolver_passes_allowed_addresses() -> None:
    resolver = PolicyResolver(OutboundPolicy(), StubResolver("93.184.216.34"))
    assert [r["host"] for r in await resolver.resolve("example.com", 443)] == ["93.184.216.34"]


def test_operator_base_urls_are_trusted() -> None:
    settings = make_settings(
        OUTBOUND_ALLOW_PRIVATE=False,
        OUTBOUND_DENY="127.0.0.2",
        ESIOS_BASE_URL="http://127.0.0.2:8081",
        TWILIO_BASE_URL="https://twilio.internal",
    )
    policy = OutboundPolicy.from_settings(settings)
    policy.check("127.0.0.2", 8081, ["127.0.0.2"])
    policy.check("twilio.internal", 443, ["10.0.0.5"])
    with pytest.raises(OutboundRefused):
        policy.check("127.0.0.2", 8082, ["127.0.0.2"])  # only the configured endpoint


async def test_target_is_checked_before_the_proxy(
    call_node: CallNode,
    upstream: StartUpstream,
    real_resources: MakeResources,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await upstream("127.0.0.1")
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url)
    resources = real_resources(OUTBOUND_ALLOW_PRIVATE=False, OUTBOUND_DENY="denied.example")
    for url, host in [
        (f"http://{METADATA}/", METADATA),
        ("http://denied.example/", "denied.example"),
        ("http://localhost:9/", "localhost"),
    ]:
        assert await refused(call_node("http", {"httpUrl": url}, resources=resources)) == host
    assert proxy.connections == 0
    resources = real_resources(OUTBOUND_ALLOW="127.0.0.5", OUTBOUND_ALLOW_PRIVATE=False)
    result = await call_node("http", {"httpUrl": "http://127.0.0.5:9/"}, resources=resources)
    assert result["statusCode"] == 200 and proxy.connections == 1  # the (trusted) proxy answered


MYSQL_REFUSED = [
    (DENY_ALIAS, "127.0.0.2", 3306, "127.0.0.2"),
    (DENY_ALIAS, "2130706434", 3306, "2130706434"),
    (NO_PRIVATE, "localhost", 3306, "localhost"),
    (NO_PRIVATE, "127.0.0.1", 3306, "127.0.0.1"),
    ({}, METADATA, 3306, METADATA),
    ({"API_PORT": 3306, "OUTBOUND_ALLOW": "127.0.0.1"}, "127.0.0.1", 3306, "127.0.0.1"),
]


@pytest.mark.parametrize(("settings", "host", "port", "named"), MYSQL_REFUSED)
async def test_mysql_host_refused(
    call_node: CallNode,
    real_resources: MakeResources,
    settings: dict[str, Any],
    host: str,
    port: int,
    named: str,
) -> None:
    config = {
        "mysqlHost": host,
        "mysqlPort": port,
        "mysqlUsername": "root",
        "mysqlQuery": "SELECT 1",
    }
    resources = real_resources(**settings)
    assert await refused(call_node("mysql", config, resources=resources)) == named
    assert resources.mysql_pools == {}


async def test_mysql_allowed_exception_reaches_the_checked_address(
    call_node: CallNode, real_resources: MakeResources
) -> None:
    resources = real_resources(OUTBOUND_ALLOW_PRIVATE=False, OUTBOUND_ALLOW="localhost")
    config = {"mysqlHost": "localhost", "mysqlUsername": "root", "mysqlQuery": "SELECT 1 AS one"}
    result = await call_node("mysql", config, resources=resources)
    assert result["outputData"] == [{"one": 1}]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_alias() -> Iterator[tuple[int, Inbox]]:
    """A plain SMTP server on the loopback alias 127.0.0.2."""
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.2", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


def email(host: str, port: int) -> dict[str, Any]:
    return {
        "emailTo": "a@example.com",
        "emailFrom": "b@example.com",
        "emailSubject": "s",
        "emailBody": "b",
        "emailSmtpHost": host,
        "emailSmtpPort": str(port),
        "emailSecurity": "none",
    }


@pytest.mark.parametrize(
    ("settings", "host", "named"),
    [
        (DENY_ALIAS, "127.0.0.2", "127.0.0.2"),
        (DENY_ALIAS, "0x7f000002", "0x7f000002"),
        (NO_PRIVATE, "127.0.0.2", "127.0.0.2"),
        ({"OUTBOUND_DENY": "127.0.0.0/8,::1"}, "localhost", "localhost"),
        ({"OUTBOUND_DENY": "smtp.evil.example"}, "smtp.evil.example", "smtp.evil.example"),
    ],
)
async def test_email_smtp_host_refused(
    call_node: CallNode,
    real_resources: MakeResources,
    smtp_alias: tuple[int, Inbox],
    settings: dict[str, Any],
    host: str,
    named: str,
) -> None:
    port, inbox = smtp_alias
    resources = real_resources(**settings)
    assert await refused(call_node("sendEmail", email(host, port), resources=resources)) == named
    assert inbox.messages == []


async def test_email_through_the_operators_smtp_host_is_exempt(
    call_node: CallNode, real_resources: MakeResources, smtp_alias: tuple[int, Inbox]
) -> None:
    port, inbox = smtp_alias
    resources = real_resources(
        OUTBOUND_DENY="127.0.0.2", SMTP_HOST="127.0.0.2", SMTP_FROM="service@example.com"
    )
    result = await call_node("sendEmail", email("127.0.0.2", port), resources=resources)
    assert result["recipients"] == ["a@example.com"] and len(inbox.messages) == 1


async def test_email_allowed_host_is_sent(
    call_node: CallNode, real_resources: MakeResources, smtp_alias: tuple[int, Inbox]
) -> None:
    port, inbox = smtp_alias
    resources = real_resources(OUTBOUND_ALLOW_PRIVATE=False, OUTBOUND_ALLOW="127.0.0.2")
    await call_node("sendEmail", email("127.0.0.2", port), resources=resources)
    assert len(inbox.messages) == 1  # through a socket to the checked address
