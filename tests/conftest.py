"""Shared fixtures: Resources on an `httpx.MockTransport`, a RunContext factory, and the store
on SQLite and PostgreSQL."""

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

import tasks  # noqa: F401  (registers every node type)
from config import ENV_FILE_VAR, Settings, get_settings
from database import Store, open_store
from flows.runner import PrefectProbe, Runner
from flows.worker import Worker
from tasks.context import Resources, RunContext, open_resources
from tasks.registry import Envelope, get_spec
from tests.support import node_backend_sqlite, postgres_database

MockHandler = Callable[[httpx.Request], httpx.Response]
MakeResources = Callable[..., Resources]
MakeCtx = Callable[..., RunContext]


@pytest.fixture(autouse=True)
def hermetic_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see a developer's service settings: every variable named like a `Settings`
    field or `PREFECT_*` is removed, and `.env` is not read (`WOS_ENV_FILE=`)."""
    for name in list(os.environ):
        if name in Settings.model_fields or name.startswith("PREFECT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(ENV_FILE_VAR, "")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


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
            execution_id="exec_test",
            workflow_id="wf_test",
            organization_id="org_test",
            inputs=inputs or {},
            node_id=node_id,
            node_type=node_type,
            node_label=node_type,
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The service's store on a Node-created SQLite file and on a throwaway PostgreSQL database
    (the backend contract suite runs every test on both)."""
    if request.param == "sqlite":
        s = await open_store(node_backend_sqlite(tmp_path / "node.sqlite"))
        yield s
        await s.close()
        return
    async for url in postgres_database():
        s = await open_store(url)
        yield s
        await s.close()


class _InProcessWake:
    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    def __call__(self) -> None:
        self.event.set()

    def close(self) -> None:
        pass


class Service:
    """The API in-process (httpx ASGI transport) with an inline worker on the same event loop."""

    def __init__(self, client: httpx.AsyncClient, db: Path) -> None:
        self.client, self.db = client, db

    async def sql(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Write like another process would, off the event loop (the worker shares the file)."""

        def write() -> None:
            conn = sqlite3.connect(self.db, timeout=10)
            for query, params in statements:
                conn.execute(query, params)
            conn.commit()
            conn.close()

        await asyncio.to_thread(write)

    async def add_workflow(self, wid: str, data: Any, name: str = "WF") -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        await self.sql(
            (
                "INSERT INTO workflows (id, organizationId, name, data) VALUES (?,?,?,?)",
                (wid, "org_test", name, text),
            )
        )

    async def execute(self, **body: Any) -> httpx.Response:
        return await self.client.post("/api/workflows/execute", json=body)

    async def wait(self, eid: str, timeout: float = 10) -> dict[str, Any]:
        for _ in range(int(timeout / 0.02)):
            body: dict[str, Any] = (await self.client.get(f"/api/executions/{eid}")).json()
            if body["status"] in ("completed", "failed", "cancelled"):
                return body
            await asyncio.sleep(0.02)
        raise AssertionError(f"execution {eid} did not finish: {body}")


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    db = tmp_path / "db.sqlite"
    node_backend_sqlite(db)
    monkeypatch.setenv("DATABASE_PATH", str(db))
    monkeypatch.setenv("EXECUTION_MODE", "inline")
    monkeypatch.delenv("API_KEYS", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    from api_service import app

    store = await open_store(settings.database_url)
    resources = open_resources(settings, store)
    worker = Worker(settings, store, Runner(settings, store, resources, PrefectProbe(None)))
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    async with LifespanManager(app):
        app.state.wake_workers = _InProcessWake(worker.wake)  # not UDP: same event loop
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Service(client, db)
    stop.set()
    await serving
    await resources.aclose()
    await store.close()
    get_settings.cache_clear()
