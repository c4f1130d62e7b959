"""Node-handler test fixtures: Resources on an `httpx.MockTransport` and a RunContext factory."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

import tasks  # noqa: F401  (registers every node type)
from config import Settings
from tasks.context import Resources, RunContext
from tasks.registry import Envelope, get_spec

MockHandler = Callable[[httpx.Request], httpx.Response]
MakeResources = Callable[..., Resources]
MakeCtx = Callable[..., RunContext]


def _no_network(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(f"no network in unit tests: {request.method} {request.url}")


def make_settings(**overrides: Any) -> Settings:
    """Settings from keyword arguments only (no `.env`); no OpenAI key unless given."""
    values: dict[str, Any] = {"OPENAI_API_KEY": None, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def make_resources() -> AsyncIterator[MakeResources]:
    """`make_resources(handler=None, **settings)`: Resources whose HTTP client answers through
    `handler` (a MockTransport function; by default every request fails to connect)."""
    opened: list[Resources] = []

    def make(handler: MockHandler | None = None, **settings: Any) -> Resources:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler or _no_network))
        resources = Resources(make_settings(**settings), client)
        opened.append(resources)
        return resources

    yield make
    for resources in opened:
        await resources.aclose()


@pytest.fixture
def resources(make_resources: MakeResources) -> Resources:
    return make_resources()


@pytest.fixture
def make_ctx(resources: Resources) -> MakeCtx:
    """`make_ctx(node_type="x", inputs=None, resources=None, node_id="n1")` → RunContext."""
    default_resources = resources

    def make(
        node_type: str = "x",
        inputs: dict[str, Any] | None = None,
        resources: Resources | None = None,
        node_id: str = "n1",
    ) -> RunContext:
        return RunContext(
            execution_id="exec_test", workflow_id="wf_test", organization_id="org_test",
            inputs=inputs or {}, node_id=node_id, node_type=node_type, node_label=node_type,
            resources=resources or default_resources,
        )

    return make


CallNode = Callable[..., Awaitable[Envelope]]


@pytest.fixture
def call_node(make_ctx: MakeCtx) -> CallNode:
    """`await call_node(type, config=None, data=None, **ctx_kwargs)`: validate the config with
    the node's model and call its handler directly (no retries, no timeout, no wrapping)."""

    async def call(
        node_type: str, config: dict[str, Any] | None = None, data: Any = None, **ctx_kwargs: Any
    ) -> Envelope:
        spec = get_spec(node_type)
        model = spec.config.model_validate(config or {})
        return await spec.handler(model, data, make_ctx(node_type, **ctx_kwargs))

    return call
