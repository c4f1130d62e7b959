"""Every endpoint and error shape, against the app in-process with an in-process inline worker."""

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from api.deps import get_store
from api_service import app
from config import get_settings
from tests.conftest import Service
from tests.support import load_fixture, on_sql_stores

SIMPLE = {
    "nodes": [
        {"id": "t", "type": "trigger"},
        {
            "id": "m",
            "type": "manualInput",
            "config": {"manualInputVarName": "n", "manualInputVarValue": "7"},
        },
    ],
    "connections": [{"id": "c", "fromNodeId": "t", "toNodeId": "m"}],
}


async def test_health(service: Service) -> None:
    r = await service.client.get("/")
    assert r.status_code == 200
    assert r.json()["status"] == "running" and r.json()["timestamp"].endswith("Z")


async def test_execute_runs_in_background_and_reports_everything(service: Service) -> None:
    await service.add_workflow("wf1", SIMPLE, name="Simple")
    r = await service.execute(workflowId="wf1", inputs={"m": "9"}, organizationId="org_test")
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["status"] == "pending"
    assert body["workflowName"] == "Simple" and len(body["executionId"]) == 16
    final = await service.wait(body["executionId"])
    assert final["status"] == "completed" and final["error"] is None
    assert final["progress"] == {
        "totalNodes": 2,
        "completedNodes": 2,
        "failedNodes": 0,
        "skippedNodes": 0,
        "percentage": 100,
    }
    assert final["nodeResults"]["m"]["outputData"] == {"n": 9}
    assert final["finalOutput"] == final["nodeResults"]
    assert final["currentNodeId"] == "m" and final["mode"] == "inline"
    assert [(log["nodeId"], log["status"]) for log in final["logs"]] == [
        ("t", "running"),
        ("t", "completed"),
        ("m", "running"),
        ("m", "completed"),
    ]
    assert isinstance(final["logs"][1]["outputData"], str)
    logs = (await service.client.get(f"/api/executions/{body['executionId']}/logs")).json()
    assert logs["executionId"] == body["executionId"] and len(logs["logs"]) == 4


async def test_inline_workflow_without_workflow_id(service: Service) -> None:
    r = await service.execute(workflow=SIMPLE, inputs={}, organizationId=None)
    assert r.status_code == 200 and r.json()["workflowName"] is None
    final = await service.wait(r.json()["executionId"])
    assert final["status"] == "completed" and final["workflowId"].startswith("inline_")


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"workflowId": "missing", "inputs": {}}, 404, "Workflow missing not found"),
        ({"inputs": {}}, 422, "workflowId is required"),
        ({"workflowId": "wf1", "inputs": "nope"}, 422, "inputs"),
        (
            {"workflow": {"nodes": [{"id": "x", "type": "opcua"}, {"id": "y", "type": "mqtt"}]}},
            422,
            "Unsupported node types: opcua (node x), mqtt (node y)",
        ),
        ({"workflow": {"nodes": "zzz"}}, 422, "Invalid workflow definition"),
    ],
)
async def test_execute_errors_are_readable(
    service: Service, body: dict[str, Any], status: int, detail: str
) -> None:
    await service.add_workflow("wf1", SIMPLE)
    r = await service.execute(**body)
    assert r.status_code == status
    assert isinstance(r.json()["detail"], str) and detail in r.json()["detail"]
    assert await service.count_executions() == 0


async def test_malformed_json_body_is_422_with_string_detail(service: Service) -> None:
    r = await service.client.post(
        "/api/workflows/execute", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "Malformed JSON" in r.json()["detail"]


async def test_invalid_stored_data_is_refused(service: Service) -> None:
    await service.add_workflow("bad", "{not json")
    r = await service.execute(workflowId="bad", inputs={})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


async def test_oversized_body_is_413(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_REQUEST_BYTES", "2048")
    get_settings.cache_clear()
    r = await service.execute(workflow=SIMPLE, inputs={"big": "x" * 5000})
    assert r.status_code == 413 and "larger than 2048" in r.json()["detail"]


async def test_cycle_fails_cleanly_without_running_nodes(service: Service) -> None:
    cyclic = {
        "nodes": [{"id": "a", "type": "output"}, {"id": "b", "type": "output"}],
        "connections": [{"fromNodeId": "a", "toNodeId": "b"}, {"fromNodeId": "b", "toNodeId": "a"}],
    }
    r = await service.execute(workflow=cyclic, inputs={})
    final = await service.wait(r.json()["executionId"])
    assert final["status"] == "failed" and "Circular dependency detected" in final["error"]
    assert final["logs"] == [] and final["completedAt"] is not None


async def test_empty_workflow_completes_at_100_percent(service: Service) -> None:
    r = await service.execute(workflow={}, inputs={})
    final = await service.wait(r.json()["executionId"])
    assert final["status"] == "completed"
    assert final["progress"]["totalNodes"] == 0 and final["progress"]["percentage"] == 100


async def test_unknown_execution_is_404_everywhere(service: Service) -> None:
    for method, path in [
        ("GET", "/api/executions/zz"),
        ("GET", "/api/executions/zz/logs"),
        ("POST", "/api/executions/zz/cancel"),
    ]:
        r = await service.client.request(method, path)
        assert r.status_code == 404 and r.json() == {"detail": "Execution zz not found"}


async def test_cancel_without_body_and_second_cancel(service: Service) -> None:
    slow = {
        "nodes": [
            {
                "id": "h",
                "type": "http",
                "config": {"httpUrl": "http://127.0.0.1:9/never", "timeoutMs": 60000},
            }
        ]
    }
    eid = (await service.execute(workflow=slow, inputs={})).json()["executionId"]
    r = await service.client.post(
        f"/api/executions/{eid}/cancel", headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert r.json()["success"] is True and r.json()["previousStatus"] in ("pending", "running")
    final = await service.wait(eid)
    assert final["status"] == "cancelled" and final["completedAt"] is not None
    again = (await service.client.post(f"/api/executions/{eid}/cancel")).json()
    assert again == {
        "success": False,
        "executionId": eid,
        "previousStatus": "cancelled",
        "message": "Cannot cancel execution with status 'cancelled'",
    }


@on_sql_stores
async def test_status_endpoint_serves_rows_written_by_node(service: Service) -> None:
    await service.sql(
        ("INSERT INTO workflows (id, name, data) VALUES ('w', 'W', '{}')", ()),
        (
            "INSERT INTO workflow_executions (id, workflowId, organizationId, status, triggerType) "
            "VALUES ('n1', 'w', NULL, 'paused', 'single_node')",
            (),
        ),
        (
            "INSERT INTO execution_logs (id, executionId, nodeId, status, timestamp) "
            "VALUES ('l1', 'n1', 'a', 'error', '2025-01-01T00:00:00.000Z')",
            (),
        ),
    )
    body = (await service.client.get("/api/executions/n1")).json()
    assert body["status"] == "paused" and body["progress"]["failedNodes"] == 1
    assert body["logs"][0]["id"] == "l1" and body["attempts"] is None


async def test_node_execute_success_and_failures(service: Service) -> None:
    base = {"workflowId": "w", "nodeId": "n1"}
    ok = await service.client.post(
        "/api/nodes/execute",
        json={
            **base,
            "nodeType": "addField",
            "inputData": {"a": 1},
            "node": {
                "id": "n1",
                "type": "addField",
                "config": {"addFieldName": "b", "addFieldValue": "2"},
            },
        },
    )
    assert ok.status_code == 200 and ok.json()["success"] is True
    assert ok.json()["output"]["outputData"] == {"a": 1, "b": "2"}
    unknown = await service.client.post(
        "/api/nodes/execute",
        json={**base, "nodeType": "opcua", "node": {"id": "n1"}, "inputData": [1, 2]},
    )
    assert unknown.status_code == 200 and unknown.json()["success"] is False
    assert "No handler found for node type: opcua" in unknown.json()["error"]
    missing = await service.client.post("/api/nodes/execute", json=base)
    assert missing.status_code == 422 and isinstance(missing.json()["detail"], str)


async def test_workflow_history(service: Service) -> None:
    await service.add_workflow("wf1", SIMPLE, name="Simple")
    ids = [
        (await service.execute(workflowId="wf1", inputs={})).json()["executionId"] for _ in range(3)
    ]
    for eid in ids:
        await service.wait(eid)
    r = await service.client.get("/api/workflows/wf1/executions?limit=2")
    body = r.json()
    assert body["workflowName"] == "Simple" and body["total"] == 3 and len(body["executions"]) == 2
    assert set(body["executions"][0]) == {
        "id",
        "workflowId",
        "status",
        "createdAt",
        "startedAt",
        "completedAt",
        "error",
        "workflowVersion",
        "workflowHash",
    }
    assert (await service.client.get("/api/workflows/nope/executions")).status_code == 404
    bad = await service.client.get("/api/workflows/wf1/executions?limit=abc")
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], str)


async def test_api_keys_guard_everything_but_health(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS", "k1, k2")
    get_settings.cache_clear()
    assert (await service.client.get("/")).status_code == 200
    r = await service.client.get("/api/executions/x")
    assert r.status_code == 401 and isinstance(r.json()["detail"], str)
    ok = await service.client.get("/api/executions/x", headers={"Authorization": "Bearer k2"})
    assert ok.status_code == 404
    ok = await service.client.get("/api/executions/x", headers={"X-API-Key": "k1"})
    assert ok.status_code == 404


async def test_fixture_01_through_the_api_inline(service: Service) -> None:
    await service.add_workflow("fx01", load_fixture("01_threshold_branch"))
    r = await service.execute(workflowId="fx01", inputs={}, organizationId="org_test")
    final = await service.wait(r.json()["executionId"])
    assert final["status"] == "completed"
    assert final["progress"]["totalNodes"] == 7 and final["progress"]["percentage"] == 100


async def test_chunked_body_over_the_limit_is_413(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug 1: without Content-Length the limit is counted while reading (was 400)."""
    monkeypatch.setenv("MAX_REQUEST_BYTES", "2048")
    get_settings.cache_clear()

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    big = json.dumps({"workflow": SIMPLE, "inputs": {"big": "x" * 5000}}).encode()
    r = await service.client.post(
        "/api/workflows/execute", content=chunks(big), headers={"content-type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json() == {"detail": "Request body larger than 2048 bytes"}
    small = json.dumps({"workflow": SIMPLE, "inputs": {}}).encode()
    r = await service.client.post(
        "/api/workflows/execute",
        content=chunks(small),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["status"] == "pending"


async def test_unexpected_error_answers_an_id_not_the_exception_text(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug 8: a store error (SQL and parameters in its text) is logged under an id; the answer
    carries only the id."""
    secret = "SELECT * FROM workflow_executions WHERE id = 'p4ssw0rd'"

    class Broken:
        async def get_execution(self, execution_id: str, *_org: Any) -> Any:
            raise OperationalError(secret, {"id": "p4ssw0rd"}, Exception("disk I/O error"))

    async def broken() -> Any:
        return Broken()

    app.dependency_overrides[get_store] = broken
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            with caplog.at_level(logging.ERROR, logger="api_service"):
                r = await client.get("/api/executions/e1")
    finally:
        app.dependency_overrides.clear()
    assert r.status_code == 500
    assert "p4ssw0rd" not in r.text and "SELECT" not in r.text and "disk" not in r.text
    match = re.fullmatch(r"Internal error ([0-9a-f]+)", r.json()["detail"])
    assert match is not None
    [record] = [rec for rec in caplog.records if getattr(rec, "error_id", None) == match[1]]
    assert match[1] in record.getMessage() and record.exc_info is not None
    assert "p4ssw0rd" in str(record.exc_info[1])


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("Prefect", "prefect"),
        ("  INLINE ", "inline"),
        ("optimized", "inline"),
        ("Legacy", "inline"),
    ],
)
async def test_execute_mode_is_normalised(service: Service, sent: str, stored: str) -> None:
    """Bug 9: "Prefect" was silently replaced by EXECUTION_MODE. The original service's flow
    names (contract §1) mean the default mode (EXECUTION_MODE=inline here)."""
    r = await service.execute(workflow=SIMPLE, inputs={}, mode=sent)
    assert r.status_code == 200
    eid = r.json()["executionId"]
    row = await service.store.get_execution(eid)
    assert row is not None and row["requestedMode"] == stored


async def test_execute_unknown_mode_is_422_naming_the_modes(service: Service) -> None:
    r = await service.execute(workflow=SIMPLE, inputs={}, mode="turbo")
    assert r.status_code == 422
    assert r.json()["detail"] == "mode: Input should be 'prefect' or 'inline'"


LONE_SURROGATE = '{"id": "t", "type": "trigger", "config": {"note": "\\ud800"}}'


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ('{"workflowId": "wf_lone"}', "not valid Unicode"),
        ('{"workflow": {"nodes": [' + LONE_SURROGATE + "]}}", "not valid Unicode"),
        ('{"workflowId": "wf1", "inputs": {"x": "\\udfff"}}', "not valid Unicode"),
    ],
)
async def test_lone_surrogates_are_422_not_500(service: Service, body: str, detail: str) -> None:
    await service.add_workflow("wf1", SIMPLE)
    await service.add_workflow("wf_lone", '{"nodes": [' + LONE_SURROGATE + '], "connections": []}')
    r = await service.client.post(
        "/api/workflows/execute", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert detail in r.json()["detail"]
    assert await service.count_executions() == 0


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        (
            "/api/workflows/execute",
            '{"workflow": {"nodes": [' + LONE_SURROGATE + "]}}",
            "workflow.nodes.0.config.note: text",
        ),
        (
            "/api/workflows/execute",
            '{"workflowId": "wf1", "inputs": {"rows": [{"ok": 1, "k\\udc00": 2}]}}',
            "inputs.rows.0: a key",
        ),
        (
            "/api/executions/nope/retry",
            '{"callback": {"url": "http://h/\\ud800"}}',
            "callback.url: text",
        ),
        (
            "/api/nodes/execute",
            '{"workflowId": "w", "nodeId": "n", "nodeType": "x", "inputData": {"a": "\\udbff"}}',
            "inputData.a: text",
        ),
    ],
)
async def test_lone_surrogates_are_refused_naming_where(
    service: Service, path: str, body: str, where: str
) -> None:
    """Every route with a JSON body, before anything else (the retry's execution is unknown)."""
    await service.add_workflow("wf1", SIMPLE)
    r = await service.client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json() == {"detail": f"{where} is not valid Unicode (a lone surrogate)"}
    assert await service.count_executions() == 0


async def test_escaped_surrogate_pairs_are_stored_as_the_character(service: Service) -> None:
    """An emoji as Python's `json.dumps` sends it (`\\ud83d\\ude00`) is one valid character."""
    workflow = json.loads(json.dumps(SIMPLE))
    workflow["nodes"][1]["config"]["manualInputVarValue"] = "\U0001f600"
    body = json.dumps({"workflow": workflow, "inputs": {"\U0001f600": "a \U0001f600"}})
    assert "\\ud83d\\ude00" in body
    r = await service.client.post(
        "/api/workflows/execute", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    final = await service.wait(r.json()["executionId"])
    assert final["status"] == "completed", final["error"]
    assert final["inputs"] == {"\U0001f600": "a \U0001f600"}
    assert final["nodeResults"]["m"]["outputData"] == {"n": "\U0001f600"}
