"""The worker's queue: concurrency limit, submission order, pending rows wait in the store."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings
from database import NewExecution, open_store
from flows.graph import parse_workflow
from flows.runner import PrefectProbe, Runner
from flows.worker import Worker
from tasks.context import open_resources
from tests.e2e import MockServer


@pytest.fixture
def slow() -> Iterator[MockServer]:
    server = MockServer({("GET", "/slow"): lambda _: (200, 0.2)})
    yield server
    server.close()


async def test_limit_and_submission_order(tmp_path: Path, slow: MockServer) -> None:
    settings = Settings(
        _env_file=None,
        DATABASE_PATH=str(tmp_path / "db.sqlite"),  # type: ignore[call-arg]
        EXECUTION_MODE="inline",
        MAX_CONCURRENT_EXECUTIONS=2,
    )
    store = await open_store(settings.database_url)
    resources = open_resources(settings, store)
    definition = parse_workflow(
        {
            "nodes": [
                {
                    "id": "h",
                    "type": "http",
                    "config": {"httpUrl": f"http://127.0.0.1:{slow.port}/slow"},
                }
            ]
        }
    ).model_dump_json()
    ids = [f"e{i}" for i in range(6)]
    for eid in ids:
        await store.create_execution(
            NewExecution(
                execution_id=eid,
                workflow_id="w",
                workflow_name=None,
                organization_id=None,
                inputs={},
                definition=definition,
                mode="inline",
            )
        )
    worker = Worker(settings, store, Runner(settings, store, resources, PrefectProbe(None)))
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    peak, rows = 0, []
    for _ in range(300):
        rows, _total = await store.list_executions("w", 10)  # one consistent snapshot
        peak = max(peak, sum(1 for r in rows if r["status"] == "running"))
        if all(r["status"] == "completed" for r in rows):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await serving
    await resources.aclose()
    await store.close()
    assert [r["status"] for r in rows] == ["completed"] * 6
    assert peak == 2
    started = [r["startedAt"] for r in sorted(rows, key=lambda r: r["id"])]
    assert started == sorted(started)  # pending executions start in submission order
