"""Events across processes: the real service (`./start.sh`, API and worker in separate
processes) streams a run the worker executes, on SQLite (the API's tailer) and PostgreSQL
(LISTEN/NOTIFY); the stream's `?api_key=` never reaches the service log."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import MockServer, RunningService
from tests.support import postgres_database_sync

pytestmark = pytest.mark.slow
KEY = "stream-key-5f0c2a9e"


@pytest.fixture
def mock() -> Iterator[MockServer]:
    server = MockServer({("GET", "/slow"): lambda _: (200, 0.2)})
    yield server
    server.close()


def workflow(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/slow"
    nodes = [
        {"id": "t", "type": "trigger"},
        {"id": "h1", "type": "http", "config": {"httpUrl": url}},
        {"id": "h2", "type": "http", "config": {"httpUrl": url}},
        {"id": "a", "type": "addField", "config": {"addFieldName": "ok", "addFieldValue": 1}},
        {"id": "o", "type": "output"},
    ]
    ids = [n["id"] for n in nodes]
    links = [{"fromNodeId": a, "toNodeId": b} for a, b in zip(ids, ids[1:], strict=False)]
    return {"nodes": nodes, "connections": links}


def frames(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    frame: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "event" in frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            frame[name] = json.loads(value) if name == "data" else value


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_subscriber_receives_every_event_of_a_run_in_another_process(
    tmp_path: Path, mock: MockServer, backend: str
) -> None:
    with postgres_database_sync() if backend == "postgres" else nullcontext() as url:
        svc = RunningService(tmp_path, "inline", database_url=url, API_KEYS=KEY)
        try:
            svc.client.headers["X-API-Key"] = KEY
            svc.add_workflow("wf", workflow(mock.port))
            with httpx.Client(base_url=svc.url, timeout=30, trust_env=False) as client:
                stream = client.stream("GET", f"/api/events?api_key={KEY}&workflowId=wf")
                with stream as r:
                    assert r.status_code == 200  # subscribed once the answer started
                    eid = svc.execute("wf", {})
                    got = []
                    for frame in frames(r.iter_lines()):
                        got.append(frame)
                        if frame["event"] == "execution.completed":
                            break
                status = client.get(f"/api/executions/{eid}", headers={"X-API-Key": KEY}).json()
        finally:
            svc.stop()
        log = svc.log_text()
    assert [f["event"] for f in got][:2] == ["execution.queued", "execution.started"]
    assert [int(f["id"]) for f in got] == sorted({int(f["id"]) for f in got})
    assert {f["data"]["executionId"] for f in got} == {eid}
    done = [f["data"]["nodeId"] for f in got if f["event"] == "node.completed"]
    assert done == ["t", "h1", "h2", "a", "o"]
    for nid in done:
        assert status["nodeResults"][nid]["success"] is True
    assert got[-1]["data"]["progress"] == status["progress"]
    assert KEY not in log


def test_open_streams_end_when_the_service_stops(tmp_path: Path) -> None:
    """uvicorn waits for open answers before it stops; the hub ends every stream first (an SSE
    answer finishes, a WebSocket closes 1001), so a stop is not held up by subscribers."""
    svc = RunningService(tmp_path, "inline")
    ended: list[str] = []

    def hold() -> None:
        with httpx.Client(base_url=svc.url, timeout=30, trust_env=False) as client:
            with client.stream("GET", "/api/events") as r:
                for _ in r.iter_lines():
                    pass
        ended.append("sse")

    reader = threading.Thread(target=hold, daemon=True)
    reader.start()
    time.sleep(1)
    took = svc.stop()
    reader.join(10)
    assert ended == ["sse"]
    assert took < 5, f"stop took {took:.1f} s"
