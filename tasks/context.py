"""What a handler receives besides its config and input: ids, run-time inputs, shared clients."""

import asyncio
import urllib.request
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from config import Settings
from database.interfaces import Store
from rate_limits import NodeLimits
from tasks.node_limits import node_limits_of
from tasks.outbound import DEFAULT_PORTS, OutboundPolicy, PolicyResolver


@dataclass
class Resources:
    """Clients shared by every node a process runs; opened once, closed on shutdown."""

    settings: Settings
    http: httpx.AsyncClient
    store: Store | None = None
    """The service's store (None in unit tests that need no database)."""
    _openai: Any = field(default=None, repr=False)
    mysql_pools: dict[Any, Any] = field(default_factory=dict, repr=False)
    """aiomysql pools of the mysql node, one per DSN (tasks/mysql_query.py)."""
    _outbound: OutboundPolicy | None = field(default=None, repr=False)
    _node_limits: NodeLimits | None = field(default=None, repr=False)

    @property
    def node_limits(self) -> NodeLimits:
        """NODE_RATE_LIMITS (tasks/node_limits.py), shared by the process's node runs."""
        if self._node_limits is None:
            self._node_limits = node_limits_of(self.settings)
        return self._node_limits

    @property
    def outbound(self) -> OutboundPolicy:
        """The outbound policy for hosts a workflow supplies (tasks/outbound.py)."""
        if self._outbound is None:
            self._outbound = OutboundPolicy.from_settings(self.settings)
        return self._outbound

    def openai(self) -> Any:
        """The shared `openai.AsyncOpenAI` client (built on first use, no SDK-level retries)."""
        if self._openai is None:
            from openai import AsyncOpenAI

            key = self.settings.OPENAI_API_KEY
            self._openai = AsyncOpenAI(
                api_key=key.get_secret_value() if key else "",
                base_url=self.settings.OPENAI_BASE_URL,
                max_retries=0,
            )
        return self._openai

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._openai is not None:
            await self._openai.close()
        for pool in self.mysql_pools.values():
            pool.terminate()
            await pool.wait_closed()
        self.mysql_pools.clear()


class _Transport(AiohttpTransport):
    """httpx's API on aiohttp's connection pool. httpcore's pool costs O(requests in flight) of
    CPU per request (15 ms each at 500 in flight on our 2 cores, 0.4 ms with aiohttp; bench/).
    httpx-aiohttp reports every aiohttp connection error as ConnectTimeout; a refused connection
    or a failed DNS lookup is a ConnectError, a dropped one a ReadError.

    Every request (each redirect is one) passes the outbound policy: names through the
    connector's PolicyResolver, address literals here (aiohttp does not resolve them), and a
    target sent through a proxy here too, before the proxy sees it."""

    def __init__(self, policy: OutboundPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    async def _check(self, url: httpx.URL) -> None:
        port = url.port or DEFAULT_PORTS.get(url.scheme, 80)
        if self.policy.check_literal(url.host, port) or self.policy.is_trusted(url.host, port):
            return
        proxies = urllib.request.getproxies()
        if url.scheme in proxies and not urllib.request.proxy_bypass(url.host):
            await self.policy.resolve(url.host, port)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._check(request.url)
        if request.url.userinfo:  # httpx sent it as the Authorization header; aiohttp refuses both
            request.url = request.url.copy_with(userinfo=b"")
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if cause is None or isinstance(cause, asyncio.TimeoutError):
                raise
            error = (
                httpx.ConnectError
                if isinstance(cause, aiohttp.ClientConnectorError)
                else httpx.ReadError
            )
            raise error(str(exc), request=request) from cause


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The shared client of the network nodes. Cookies are never kept: executions of different
    workflows and organisations share it. HTTP(S)_PROXY / NO_PROXY apply, as with httpx."""

    policy = OutboundPolicy.from_settings(settings)

    def session() -> aiohttp.ClientSession:  # built lazily, inside the running event loop
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.HTTP_MAX_CONNECTIONS, resolver=PolicyResolver(policy)
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=True,
        )

    return httpx.AsyncClient(
        transport=_Transport(policy, client=session),
        follow_redirects=True,
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
    )


def open_resources(settings: Settings, store: Store | None = None) -> Resources:
    """The process's clients; raises RateLimitSettingError for NODE_RATE_LIMITS naming unknown
    node types (so the process refuses to start)."""
    node_limits = node_limits_of(settings)
    return Resources(settings, http_client(settings), store, _node_limits=node_limits)


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """Everything about the run a handler may read; `attempt` counts from 1."""

    execution_id: str
    workflow_id: str | None
    organization_id: str | None
    inputs: dict[str, Any]
    node_id: str
    node_type: str
    node_label: str
    resources: Resources
    attempt: int = 1

    @property
    def settings(self) -> Settings:
        return self.resources.settings

    @property
    def http(self) -> httpx.AsyncClient:
        return self.resources.http
