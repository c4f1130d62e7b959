"""The dashboard's page and files, and the API it reads besides the status view:
`GET /api/executions` (every workflow, cursor paging, filters, counts) and
`GET /api/executions/{id}/workflow`; organization scope and bad input, on every store."""

import json
import re
from typing import Any

import pytest

from api.listing import encode_cursor
from api.routes.dashboard import FILES, STATIC
from config import get_settings
from tests.conftest import Service
from tests.support import seed_rows

A_KEY, B_KEY, SERVICE_KEY = "dash-key-a", "dash-key-b", "dash-service"
A, B, SVC = ({"X-API-Key": k} for k in (A_KEY, B_KEY, SERVICE_KEY))
GRAPH = {
    "nodes": [
        {"id": "t", "type": "trigger", "label": "Start"},
        {
            "id": "c",
            "type": "condition",
            "config": {"conditionField": "x", "conditionOperator": "isNotEmpty"},
        },
        {
            "id": "h",
            "type": "http",
            "config": {"httpUrl": "http://user:secret@127.0.0.1:9/x"},  # never answered back
        },
        {"id": "o", "type": "output"},
    ],
    "connections": [
        {"fromNodeId": "t", "toNodeId": "c"},
        {"fromNodeId": "c", "toNodeId": "h", "outputType": "true"},
        {"fromNodeId": "c", "toNodeId": "o", "outputType": "false", "inputPort": "B"},
        {"fromNodeId": "o", "toNodeId": "ghost"},  # dropped: no such node
    ],
}
SIMPLE = {
    "nodes": [{"id": "t", "type": "trigger"}, {"id": "o", "type": "output"}],
    "connections": [{"fromNodeId": "t", "toNodeId": "o"}],
}


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", f"{SERVICE_KEY}, {A_KEY}@org_a, {B_KEY}@org_b")
    get_settings.cache_clear()


async def submit(service: Service, headers: dict[str, str] | None = None, **body: Any) -> str:
    r = await service.client.post("/api/workflows/execute", json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    eid: str = r.json()["executionId"]
    return eid


async def test_the_page_and_its_files_need_no_key(service: Service, keys: None) -> None:
    c = service.client
    page = await c.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name, media in FILES.items():
        r = await c.get(f"/dashboard/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), name
        assert f'src="dashboard/{name}"' in page.text or f'href="dashboard/{name}"' in page.text
    for bad in ("index.htm", "..%2Fconfig.py", "app.js.map"):
        r = await c.get(f"/dashboard/{bad}")
        assert r.status_code == 404 and "detail" in r.json(), bad
    assert (await c.get("/api/executions")).status_code == 401


def test_the_dashboard_loads_nothing_from_elsewhere() -> None:
    """Works offline: no URL of another origin in the page, scripts or stylesheet."""
    for path in STATIC.iterdir():
        text = path.read_text().replace('"http://www.w3.org/2000/svg"', "")  # a namespace name
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path.name
        assert "@import" not in text and "<script>" not in text, path.name
    assert sorted(p.name for p in STATIC.iterdir()) == sorted([*FILES, "index.html"])


async def test_list_pages_filters_and_counts(service: Service) -> None:
    await service.add_workflow("wf_named", SIMPLE, name="Named")
    done = []
    for body in ({"workflowId": "wf_named", "organizationId": "org_test"}, {"workflow": SIMPLE}):
        done.append(await submit(service, **body))
        await service.wait(done[-1])  # one at a time: each is created after the last
    failed = await submit(service, workflow={"nodes": [{"id": "x", "type": "llm"}]})
    assert (await service.wait(failed))["status"] == "failed"  # no OpenAI key
    newest = [failed, *reversed(done)]

    seen: list[dict[str, Any]] = []
    before = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2, **({"before": before} if before else {})}
        r = await service.client.get("/api/executions", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["counts"] == {"pending": 0, "running": 0}
        seen += body["executions"]
        before = body["nextCursor"]
        if before is None:
            break
    assert [e["executionId"] for e in seen] == newest
    named = next(e for e in seen if e["executionId"] == done[0])
    assert (named["workflowId"], named["workflowName"], named["status"]) == (
        "wf_named",
        "Named",
        "completed",
    )
    assert named["organizationId"] == "org_test" and named["createdAt"].endswith("Z")

    r = await service.client.get("/api/executions", params={"status": "failed"})
    assert [e["executionId"] for e in r.json()["executions"]] == [failed]
    r = await service.client.get("/api/executions", params={"workflowId": "wf_named"})
    assert [e["executionId"] for e in r.json()["executions"]] == [done[0]]
    assert r.json()["nextCursor"] is None


async def test_counts_of_pending_executions(service: Service) -> None:
    # rows the Node backend queued for itself: counted, never run by the in-process worker
    await seed_rows(
        service.store,
        "workflow_executions",
        [
            {"id": f"p{i}", "workflowId": "wf_p", "status": "pending", "createdAt": f"t{i}"}
            for i in range(3)
        ]
        + [{"id": "r0", "workflowId": "wf_r", "status": "running", "createdAt": "t9"}],
    )
    body = (await service.client.get("/api/executions?limit=1")).json()
    assert body["counts"] == {"pending": 3, "running": 1}
    assert [e["executionId"] for e in body["executions"]] == ["r0"]
    body = (await service.client.get("/api/executions?workflowId=wf_p&status=running")).json()
    assert body["counts"] == {"pending": 3, "running": 0} and body["executions"] == []


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
        ("before=%25%25%25", "before"),
        ("before=" + encode_cursor(None, "x")[:-2] + "!!", "before"),
        ("before=WzEsMl0", "before"),  # [1,2]: valid JSON, not a cursor
        ("before=" + "a" * 2001, "before"),
        ("workflowId=" + "w" * 201, "workflowId"),
    ],
)
async def test_bad_list_queries_are_422(service: Service, query: str, names: str) -> None:
    r = await service.client.get(f"/api/executions?{query}")
    assert r.status_code == 422, r.text
    assert names in r.json()["detail"]


async def test_organization_keys_see_only_their_org(service: Service, keys: None) -> None:
    service.client.headers.update(SVC)
    a = await submit(service, A, workflow=SIMPLE)
    await service.wait(a)
    b = await submit(service, B, workflow=SIMPLE)
    await service.wait(b)
    del service.client.headers["X-API-Key"]

    async def listed(headers: dict[str, str], query: str = "") -> list[str]:
        r = await service.client.get(f"/api/executions{query}", headers=headers)
        assert r.status_code == 200, r.text
        return [e["executionId"] for e in r.json()["executions"]]

    assert await listed(A) == [a]
    assert await listed(B) == [b]
    assert await listed(SVC) == [b, a]
    wf_b = (await service.client.get(f"/api/executions/{b}", headers=B)).json()["workflowId"]
    assert await listed(A, f"?workflowId={wf_b}") == []
    assert (await service.client.get(f"/api/executions/{a}/workflow", headers=A)).status_code == 200
    r = await service.client.get(f"/api/executions/{b}/workflow", headers=A)
    assert r.status_code == 404 and r.json() == {"detail": f"Execution {b} not found"}


async def test_workflow_of_an_execution_without_configs(service: Service) -> None:
    eid = await submit(service, workflow=GRAPH, workflowId="wf_graph")
    await service.wait(eid)
    r = await service.client.get(f"/api/executions/{eid}/workflow")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["executionId"], body["workflowId"], body["workflowName"]) == (
        eid,
        "wf_graph",
        None,
    )
    assert body["nodes"] == [
        {"id": "t", "type": "trigger", "label": "Start"},
        {"id": "c", "type": "condition", "label": "condition"},
        {"id": "h", "type": "http", "label": "http"},
        {"id": "o", "type": "output", "label": "output"},
    ]
    assert body["connections"] == [
        {"fromNodeId": "t", "toNodeId": "c", "branch": None, "inputPort": None},
        {"fromNodeId": "c", "toNodeId": "h", "branch": "true", "inputPort": None},
        {"fromNodeId": "c", "toNodeId": "o", "branch": "false", "inputPort": "B"},
    ]
    assert "secret" not in r.text and "config" not in r.text


async def test_workflow_of_unknown_and_foreign_rows_is_404(service: Service) -> None:
    r = await service.client.get("/api/executions/nope/workflow")
    assert r.status_code == 404 and r.json() == {"detail": "Execution nope not found"}
    # a row the Node backend ran itself: the service has no definition of it
    await seed_rows(
        service.store,
        "workflow_executions",
        [{"id": "node_run", "workflowId": "wf", "status": "completed", "createdAt": "t"}],
    )
    r = await service.client.get("/api/executions/node_run/workflow")
    assert r.status_code == 404 and "not run by this service" in r.json()["detail"]
    listed = (await service.client.get("/api/executions")).json()["executions"]
    assert [e["executionId"] for e in listed] == ["node_run"]


def test_cursor_round_trip() -> None:
    from api.listing import InvalidCursor, decode_cursor

    for created, eid in [("2026-01-01T00:00:00.000Z", "abc"), (None, "x y"), ("", "é")]:
        assert decode_cursor(encode_cursor(created, eid)) == (created, eid)
    for bad in ["", "e30", "bnVsbA", json.dumps([1])]:
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)
