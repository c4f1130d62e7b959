"""Issue 9: the status view of an execution with big results copies the stored JSON columns
into the body (no decode and re-encode on the API's loop), and says exactly what the decoded
view says."""

import time
from typing import Any

from api import executions
from tests.conftest import Service

ROWS = [{"id": i, "name": f"row {i}", "city": "Sevilla", "n": [i, 1.5, None]} for i in range(5000)]


def workflow(data: Any) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "w", "type": "webhook", "config": {"webhookData": data}},
            {"id": "o", "type": "output"},
        ],
        "connections": [{"fromNodeId": "w", "toNodeId": "o"}],
    }


async def test_a_big_status_is_spliced_and_equal_to_the_decoded_one(service: Service) -> None:
    await service.add_workflow("big", workflow(ROWS))
    response = await service.execute(workflowId="big", inputs={"k": "é"}, organizationId="org_test")
    assert response.status_code == 200, response.text
    eid = response.json()["executionId"]
    await service.wait(eid)

    raw: dict[str, str] = {}
    spliced = await executions.execution_public(service.store, eid, None, raw)
    assert list(raw.values()) and all(
        len(t) >= executions.RAW_COLUMN_MIN_CHARS for t in raw.values()
    )
    decoded = await executions.execution_public(service.store, eid)
    started = time.perf_counter()
    body = (await service.client.get(f"/api/executions/{eid}")).json()
    assert time.perf_counter() - started < 5
    assert body == decoded.model_dump(mode="json")
    assert body["nodeResults"]["o"]["outputData"] == ROWS
    assert executions.spliced_json(spliced, raw).decode().count("wos-raw-column-") == 0


async def test_a_small_status_is_decoded_as_before(service: Service) -> None:
    await service.add_workflow("small", workflow([{"a": 1}]))
    response = await service.execute(workflowId="small", inputs={}, organizationId="org_test")
    eid = response.json()["executionId"]
    await service.wait(eid)
    raw: dict[str, str] = {}
    await executions.execution_public(service.store, eid, None, raw)
    assert raw == {}
    body = (await service.client.get(f"/api/executions/{eid}")).json()
    assert body["nodeResults"]["o"]["outputData"] == [{"a": 1}]
