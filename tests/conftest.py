"""Shared fixtures: Resources on an `httpx.MockTransport`, a RunContext factory, the store on
SQLite, PostgreSQL and in memory, the in-process service, and the real services shared by the
end-to-end tests (a prefect-mode `./start.sh`, Prefect's production setup)."""

import asyncio
import json
import os
import re
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
from database.sql import SqlStore
from flows.runner import PrefectProbe, Runner
from flows.worker import Worker
from tasks.context import Resources, RunContext, open_resources
from tasks.registry import Envelope, get_spec
from tests.e2e import RunningService
from tests.prefect_stack import PrefectStack
from tests.support import ALL_STORES, SQL_STORES, seed_rows, store_url

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


@pytest.fixture(params=ALL_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The service's store on a Node-created SQLite file, a throwaway PostgreSQL database and in
    memory (the store contract suite runs every test on all three)."""
    async with store_url(request.param, tmp_path) as url:
        s = await open_store(url)
        yield s
        await s.close()


@pytest.fixture(params=SQL_STORES)
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    """The store on SQLite and PostgreSQL only, for tests that write raw SQL."""
    async with store_url(request.param, tmp_path) as url:
        s = await open_store(url)
        assert isinstance(s, SqlStore)
        yield s
        await s.close()


class _InProcessWake:
    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    def __call__(self) -> None:
        self.event.set()

    def close(self) -> None:
        pass


_COUNT = "SELECT COUNT(*) FROM workflow_executions"


class Service:
    """The API in-process (httpx ASGI transport) with an inline worker on the same event loop.
    `kind` is its store's backend; `db` the SQLite file (sqlite only)."""

    def __init__(self, client: httpx.AsyncClient, db: Path, kind: str, store: Store) -> None:
        self.client, self.db, self.kind, self.store = client, db, kind, store

    async def sql(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Write like another process would (`?` placeholders): off the event loop on SQLite (the
        worker shares the file), through the store's engine on PostgreSQL."""
        if self.kind == "memory":
            pytest.fail("raw SQL needs a SQL store: run this test on sqlite/postgres only")
        if self.kind == "postgres":
            assert isinstance(self.store, SqlStore)
            async with self.store.write() as conn:
                for query, params in statements:
                    for n in range(1, len(params) + 1):
                        query = query.replace("?", f"${n}", 1)
                    quoted = re.sub(r"\b([a-z]+[A-Z]\w*)\b", r'"\1"', query)  # camelCase
                    await conn.exec_driver_sql(quoted, params)
            return

        def write() -> None:
            conn = sqlite3.connect(self.db, timeout=10)
            for query, params in statements:
                conn.execute(query, params)
            conn.commit()
            conn.close()

        await asyncio.to_thread(write)

    async def count_executions(self) -> int:
        """How many `workflow_executions` rows the store holds."""
        if isinstance(self.store, SqlStore):
            async with self.store.read() as conn:
                return int((await conn.exec_driver_sql(_COUNT)).scalar_one())
        return len(self.store.executions)  # type: ignore[attr-defined]

    async def add_workflow(self, wid: str, data: Any, name: str = "WF") -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        if self.kind == "memory":
            row = {"id": wid, "organizationId": "org_test", "name": name, "data": text}
            await seed_rows(self.store, "workflows", [row])
            return
        await self.sql(
            (  # PostgreSQL keeps the Node backend's foreign keys
                "INSERT INTO organizations (id, name) VALUES ('org_test', 'Test org') "
                "ON CONFLICT DO NOTHING",
                (),
            ),
            (
                "INSERT INTO workflows (id, organizationId, name, data) VALUES (?,?,?,?)",
                (wid, "org_test", name, text),
            ),
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


@pytest.fixture(params=ALL_STORES)
async def service(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    """The in-process service on every store (`tests.support.on_sql_stores` for tests that
    write raw SQL)."""
    kind = request.param
    async with store_url(kind, tmp_path) as url:
        async for service in _service(kind, url, tmp_path, monkeypatch):
            yield service


async def _service(
    kind: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    db = tmp_path / "node.sqlite"
    if kind == "postgres":
        monkeypatch.setenv("DATABASE_URL", url)
    else:  # memory: is no DATABASE_URL; the app's lifespan is handed the worker's store
        monkeypatch.setenv("DATABASE_PATH", str(db))
    monkeypatch.setenv("EXECUTION_MODE", "inline")
    monkeypatch.delenv("API_KEYS", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    import api_service
    from api_service import app

    store = await open_store(url if kind == "memory" else settings.database_url)
    if kind == "memory":

        async def same_store(_url: str, **_kw: Any) -> Store:
            return store

        monkeypatch.setattr(api_service, "open_store", same_store)
    resources = open_resources(settings, store)
    worker = Worker(settings, store, Runner(settings, store, resources, PrefectProbe(None)))
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    async with LifespanManager(app):
        app.state.wake_workers = _InProcessWake(worker.wake)  # not UDP: same event loop
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Service(client, db, kind, store)
    stop.set()
    await serving
    await resources.aclose()
    await store.close()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    """Prefect's production setup (tests/prefect_stack.py: two `--no-services` API replicas and
    one services process on PostgreSQL and Redis), started once and shared by the cluster tests
    (~20 s to start). Its late-runs service looks every second and marks a run late after 2 s."""
    stack = PrefectStack(
        tmp_path_factory.mktemp("prefect-stack"),
        PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS="1",
        PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS="2",
    )
    with stack:
        yield stack


@pytest.fixture(scope="session")
def prefect_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """One prefect-mode service (`./start.sh` with the embedded Prefect server, on a fresh
    PREFECT_HOME: the first start of an empty home is covered here) shared by the end-to-end
    tests that need only the defaults, started at first use. They neither stop it nor change
    its settings, and each brings its own workflows and mock servers. Prefect's retryable
    errors are logged, so a test can check that none happened."""
    svc = RunningService(
        tmp_path_factory.mktemp("prefect-service"),
        "prefect",
        seed_prefect=False,
        PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true",
    )
    try:
        yield svc
    finally:
        took = svc.stop()
    assert took < 15, f"SIGTERM to the process group took {took:.1f} s"
