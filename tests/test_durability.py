"""Idempotent submit, retry from the failure, cancel races, per-node retries — in-process."""

import asyncio
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Service
from tests.e2e import MockServer
from tests.support import on_sql_stores


@pytest.fixture
def flaky() -> Iterator[MockServer]:
    """`/flaky` fails with 500 while `state["fail"]` is true; `/slow` and `/slower` answer
    after 0.3 s and 1.5 s."""
    state = {"fail": True}
    server = MockServer(
        {
            ("GET", "/ok"): lambda _: (200, {"ok": True}),
            ("GET", "/flaky"): lambda _: (
                (500, {"error": "down"}) if state["fail"] else (200, {"v": 1})
            ),
            ("GET", "/slow"): lambda _: (200, 0.3),
            ("GET", "/slower"): lambda _: (200, 1.5),
        }
    )
    server.state = state  # type: ignore[attr-defined]
    yield server
    server.close()


def chain(port: int, *paths: str, **config: Any) -> dict[str, Any]:
    nodes = [{"id": "t", "type": "trigger"}]
    for i, path in enumerate(paths):
        nodes.append(
            {
                "id": f"h{i}",
                "type": "http",
                "config": {"httpUrl": f"http://127.0.0.1:{port}{path}", **config},
            }
        )
    ids = [n["id"] for n in nodes]
    return {
        "nodes": nodes,
        "connections": [
            {"fromNodeId": a, "toNodeId": b} for a, b in zip(ids, ids[1:], strict=False)
        ],
    }


async def test_idempotency_key_returns_the_same_execution(service: Service) -> None:
    body = {
        "workflow": {"nodes": [{"id": "t", "type": "trigger"}]},
        "inputs": {},
        "organizationId": "org_a",
    }
    post = service.client.post
    first = await post("/api/workflows/execute", json=body, headers={"Idempotency-Key": "k1"})
    again = await post("/api/workflows/execute", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 200
    assert again.json()["executionId"] == first.json()["executionId"]
    other_org = await post(
        "/api/workflows/execute",
        json={**body, "organizationId": "org_b"},
        headers={"Idempotency-Key": "k1"},
    )
    assert other_org.json()["executionId"] != first.json()["executionId"]
    changed = await post(
        "/api/workflows/execute",
        json={**body, "inputs": {"x": 1}},
        headers={"Idempotency-Key": "k1"},
    )
    assert changed.status_code == 409 and "different request body" in changed.json()["detail"]
    await service.wait(first.json()["executionId"])
    later = await post("/api/workflows/execute", json=body, headers={"Idempotency-Key": "k1"})
    assert later.json()["status"] == "completed"
    assert await service.count_executions() == 2


async def test_retry_reuses_completed_nodes(service: Service, flaky: MockServer) -> None:
    wf = chain(flaky.port, "/ok", "/flaky", "/ok", retries=0)
    eid = (await service.execute(workflow=wf, inputs={"k": 1})).json()["executionId"]
    failed = await service.wait(eid)
    assert failed["status"] == "failed" and failed["nodeResults"]["h1"]["attempts"] == 1
    assert failed["nodeResults"]["h2"]["skipped"] is True
    ok_calls = len(flaky.calls("GET", "/ok"))
    flaky.state["fail"] = False  # type: ignore[attr-defined]
    r = await service.client.post(f"/api/executions/{eid}/retry")
    assert r.status_code == 200
    body = r.json()
    assert body["retryOf"] == eid and body["status"] == "pending" and body["success"] is True
    final = await service.wait(body["executionId"])
    assert final["status"] == "completed" and final["retryOf"] == eid
    assert final["inputs"] == {"k": 1}
    assert final["nodeResults"]["h0"]["reusedFrom"] == eid
    assert len(flaky.calls("GET", "/ok")) == ok_calls + 1  # only h2 ran again
    assert final["progress"]["completedNodes"] == 4

    scratch = await service.client.post(f"/api/executions/{eid}/retry", json={"fromScratch": True})
    final = await service.wait(scratch.json()["executionId"])
    assert "reusedFrom" not in final["nodeResults"]["h0"]
    assert len(flaky.calls("GET", "/ok")) == ok_calls + 3


async def test_retry_refuses_other_statuses(service: Service) -> None:
    eid = (await service.execute(workflow={}, inputs={})).json()["executionId"]
    await service.wait(eid)
    r = await service.client.post(f"/api/executions/{eid}/retry")
    assert r.status_code == 409 and "completed" in r.json()["detail"]
    assert (await service.client.post("/api/executions/nope/retry")).status_code == 404


async def test_network_nodes_retry_with_backoff_and_count_attempts(
    service: Service, flaky: MockServer
) -> None:
    wf = chain(flaky.port, "/flaky", retryDelayMs=10)
    final = await service.wait(
        (await service.execute(workflow=wf, inputs={})).json()["executionId"]
    )
    assert len(flaky.calls("GET", "/flaky")) == 3  # 1 + 2 retries (Decision 12)
    assert final["nodeResults"]["h0"]["attempts"] == 3
    assert [log["status"] for log in final["logs"] if log["nodeId"] == "h0"] == ["running", "error"]


async def test_timeout_is_a_clear_node_error(service: Service, flaky: MockServer) -> None:
    wf = chain(flaky.port, "/slow", timeoutMs=50, retries=0)
    final = await service.wait(
        (await service.execute(workflow=wf, inputs={})).json()["executionId"]
    )
    assert final["status"] == "failed"
    assert "timed out after 0.05 s" in final["nodeResults"]["h0"]["error"]


async def test_cancel_race_never_mixes_outcomes(service: Service, flaky: MockServer) -> None:
    wf = chain(flaky.port, "/ok", "/slow", "/ok")
    rng = random.Random(7)

    async def one() -> tuple[dict[str, Any], dict[str, Any]]:
        eid = (await service.execute(workflow=wf, inputs={})).json()["executionId"]
        await asyncio.sleep(rng.uniform(0, 0.6))
        answer = (await service.client.post(f"/api/executions/{eid}/cancel")).json()
        return answer, await service.wait(eid, timeout=30)

    results = await asyncio.gather(*(one() for _ in range(50)))
    outcomes = {final["status"] for _, final in results}
    assert outcomes <= {"cancelled", "completed"}
    for answer, final in results:
        if answer["success"]:
            assert final["status"] == "cancelled"
            assert final["error"] == "Execution cancelled by user" and final["completedAt"]
            assert await settles(service, final["executionId"])
        else:
            assert final["status"] == "completed" and final["error"] is None
            assert answer["message"] == "Cannot cancel execution with status 'completed'"
    assert "cancelled" in outcomes


async def settles(service: Service, eid: str) -> bool:
    """In-flight nodes of a cancelled run end with one final row each (within a few seconds)."""
    for _ in range(100):
        statuses = [log["status"] for log in await logs_of(service, eid)]
        if statuses.count("running") == statuses.count("completed") + statuses.count("error"):
            return True
        await asyncio.sleep(0.05)
    return False


async def logs_of(service: Service, eid: str) -> list[dict[str, Any]]:
    return list((await service.client.get(f"/api/executions/{eid}/logs")).json()["logs"])


@on_sql_stores
async def test_cancel_written_by_node_backend_stops_the_run(
    service: Service, flaky: MockServer
) -> None:
    wf = chain(flaky.port, "/slower", "/slower", "/slower", "/slower")
    eid = (await service.execute(workflow=wf, inputs={})).json()["executionId"]
    while not any(log["nodeId"] == "h0" for log in await logs_of(service, eid)):
        await asyncio.sleep(0.01)
    await service.sql(
        (
            "UPDATE workflow_executions SET status='cancelled', "
            "completedAt='2030-01-01T00:00:00.000Z' WHERE id=?",
            (eid,),
        )
    )
    final = await service.wait(eid)
    await asyncio.sleep(0.5)
    logs = await logs_of(service, eid)
    assert final["status"] == "cancelled" and len(flaky.calls("GET", "/slower")) == 1
    assert [log["error"] for log in logs if log["status"] == "error"] == [
        "Execution cancelled by user"
    ]


async def test_connections_without_endpoints_are_dropped_and_logged(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug 10: such connections no longer make the workflow invalid; the run goes on and the
    execution's service log says how many were dropped."""
    wf = {
        "nodes": [{"id": "t", "type": "trigger"}, {"id": "o", "type": "output"}],
        "connections": [
            {"id": "no-ends"},
            {"fromNodeId": 3, "toNodeId": "o"},
            {"fromNodeId": "t", "toNodeId": "o"},
        ],
    }
    caplog.set_level(logging.WARNING, logger="flows.runner")
    answer = await service.execute(workflow=wf, inputs={})
    assert answer.status_code == 200
    eid = answer.json()["executionId"]
    final = await service.wait(eid)
    assert final["status"] == "completed"
    assert set(final["nodeResults"]) == {"t", "o"}
    dropped = [r for r in caplog.records if getattr(r, "execution_id", None) == eid]
    assert [r.getMessage() for r in dropped] == [
        f"execution {eid}: 2 connection(s) without existing endpoints dropped"
    ]
