"""Issue 12, versions: which definition an execute runs (`version`, DEFAULT_WORKFLOW_VERSION and
`_triggerType`), the version and hash every execution records (retries keep them), the read-only
version endpoints (list, one, diff) and the store reads under them, on every store."""

import hashlib
import json
from typing import Any

import pytest
import rfc8785

from api.versions import changed_keys, definition_hash
from config import get_settings
from database import Store
from database.interfaces import ExecutionQuery, NewExecution
from database.memory import MemoryStore
from database.schema import workflows
from errors import GraphValidationError
from models import NodeDef
from tests.conftest import Service
from tests.support import seed_rows


def trigger_only(node_id: str, **extra: Any) -> dict[str, Any]:
    """A workflow whose single node's id tells which definition ran."""
    return {"nodes": [{"id": node_id, "type": "trigger", "x": 1, **extra}], "connections": []}


DRAFT = trigger_only("draft_node")
V1 = trigger_only("v1_node")
V2 = trigger_only("v2_node")


def expected_hash(definition: dict[str, Any]) -> str:
    pair = {"nodes": definition.get("nodes", []), "connections": definition.get("connections", [])}
    return hashlib.sha256(rfc8785.dumps(pair)).hexdigest()


async def add_workflow(store: Store, wid: str, data: Any, org: str = "org_test") -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    if isinstance(store, MemoryStore):
        store.put_workflow(wid, text, "WF", org)
        return
    async with store.write() as conn:  # type: ignore[attr-defined]
        found = await conn.exec_driver_sql(f"SELECT 1 FROM organizations WHERE id = '{org}'")
        if found.first() is None:
            await conn.exec_driver_sql(
                f"INSERT INTO organizations (id, name) VALUES ('{org}', 'O')"
            )
    await seed_rows(
        store, "workflows", [{"id": wid, "organizationId": org, "name": "WF", "data": text}]
    )


async def add_version(
    store: Store,
    wid: str,
    version: int,
    data: Any,
    *,
    published: bool = False,
    org: str = "org_test",
    **columns: Any,
) -> str:
    """A `workflow_versions` row as the Node backend writes it (publishing sets the workflow's
    publishedVersionId)."""
    text = data if isinstance(data, str) else json.dumps(data)
    vid = f"{wid}_v{version}"
    if isinstance(store, MemoryStore):
        return store.put_version(
            wid, version, text, organization_id=org, published=published, id=vid, **columns
        )
    row = {"id": vid, "workflowId": wid, "organizationId": org, "version": version, "data": text}
    await seed_rows(store, "workflow_versions", [row | columns])
    if published:
        await publish(store, wid, vid)
    return vid


async def publish(store: Store, wid: str, version_id: str | None) -> None:
    if isinstance(store, MemoryStore):
        store.publish(wid, version_id)
        return
    async with store.write() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            workflows.update().where(workflows.c.id == wid).values(publishedVersionId=version_id)
        )


async def seed_three(store: Store, wid: str = "wf1", org: str = "org_test") -> None:
    """A draft, version 1 (published) and version 2."""
    await add_workflow(store, wid, DRAFT, org)
    await add_version(
        store,
        wid,
        1,
        V1,
        published=True,
        org=org,
        name="First",
        description="the first",
        createdAt="2026-01-01T00:00:00.000Z",
        createdByName="Ana",
    )
    await add_version(
        store, wid, 2, V2, org=org, name="Second", createdAt="2026-01-02T00:00:00.000Z"
    )


# ---- the store reads


async def test_store_lists_versions_newest_first_with_published(store: Store) -> None:
    await seed_three(store)
    rows = await store.list_versions("wf1", 10)
    assert [(r["version"], r["published"], r["name"]) for r in rows] == [
        (2, False, "Second"),
        (1, True, "First"),
    ]
    assert rows[1]["createdByName"] == "Ana" and rows[1]["description"] == "the first"
    assert rows[0]["size"] == len(json.dumps(V2)) and "data" not in rows[0]
    one = await store.get_version("wf1", 2)
    assert one is not None and json.loads(one["data"]) == V2
    assert [r["version"] for r in await store.list_versions("wf1", 1)] == [2]
    assert await store.list_versions("nope", 10) == []


async def test_store_gets_a_version_and_the_published_one(store: Store) -> None:
    await add_workflow(store, "wf1", DRAFT)
    await add_workflow(store, "wf2", DRAFT)
    assert await store.get_published_version("wf1") is None
    vid = await add_version(store, "wf1", 1, V1)
    await add_version(store, "wf2", 3, V2, published=True)
    assert await store.get_published_version("wf1") is None  # a version, none published
    row = await store.get_version("wf1", 1)
    assert row is not None and row["id"] == vid and row["published"] is False
    assert await store.get_version("wf1", 3) is None  # wf2's version number
    await publish(store, "wf1", vid)
    published = await store.get_published_version("wf1")
    assert published is not None and published["version"] == 1 and published["published"] is True
    await publish(store, "wf1", "wf2_v3")  # names another workflow's version: not wf1's
    assert await store.get_published_version("wf1") is None
    await publish(store, "wf1", "gone")
    assert await store.get_published_version("wf1") is None


async def test_store_records_version_and_hash_in_every_read(store: Store) -> None:
    new = NewExecution("e1", "wf1", "WF", "org_test", {}, json.dumps(V1), "inline")
    await store.create_execution(
        NewExecution(**{**new.__dict__, "workflow_version": 7, "workflow_hash": "ab" * 32})
    )
    await store.create_execution(NewExecution(**{**new.__dict__, "execution_id": "e2"}))
    row = await store.get_execution("e1")
    assert row is not None and (row["workflowVersion"], row["workflowHash"]) == (7, "ab" * 32)
    other = await store.get_execution("e2")
    assert other is not None and (other["workflowVersion"], other["workflowHash"]) == (None, None)
    listed, _ = await store.list_executions("wf1", 10)
    assert {r["id"]: r["workflowVersion"] for r in listed} == {"e1": 7, "e2": None}
    overview, _ = await store.list_all_executions(ExecutionQuery(limit=10))
    assert {r["id"]: r["workflowHash"] for r in overview} == {"e1": "ab" * 32, "e2": None}


# ---- the hash and the diff


async def test_hash_ignores_key_order_and_whitespace() -> None:
    compact = json.dumps(V1, separators=(",", ":"))
    spaced = json.dumps(
        {"connections": [], "nodes": [{"x": 1, "type": "trigger", "id": "v1_node"}]}, indent=3
    )
    assert await definition_hash(compact) == await definition_hash(spaced) == expected_hash(V1)
    assert await definition_hash(V1) == expected_hash(V1)  # an inline object
    assert await definition_hash(json.dumps({"nodes": V1["nodes"]})) == expected_hash(V1)
    assert await definition_hash(trigger_only("v1_node", x=1.0)) == expected_hash(V1)  # 1.0 is 1
    assert await definition_hash(trigger_only("v1_node", x=2)) != expected_hash(V1)
    assert await definition_hash(trigger_only("v1_node", x=True)) != expected_hash(V1)
    big = json.dumps(trigger_only("v1_node", config={"n": "x" * 100_000}))  # hashed in the pool
    assert await definition_hash(big) == expected_hash(json.loads(big))


async def test_hash_numbers_as_doubles_and_refuses_nan() -> None:
    assert await definition_hash(trigger_only("a", x=2**60)) == expected_hash(
        trigger_only("a", x=float(2**60))
    )
    with pytest.raises(GraphValidationError, match="cannot be hashed"):
        await definition_hash('{"nodes": [{"id": "a", "type": "trigger", "x": NaN}]}')
    with pytest.raises(GraphValidationError, match="cannot be hashed"):
        await definition_hash(trigger_only("a", x=10**400))


def node(**fields: Any) -> NodeDef:
    return NodeDef.model_validate({"id": "n", "type": "http", **fields})


def test_changed_keys_compare_json_values() -> None:
    assert changed_keys(node(config={"a": 1}, x=5), node(config={"a": 1.0}, x=9)) == []
    assert changed_keys(node(), node(config={})) == []
    assert changed_keys(node(config={"a": 1, "b": [1]}), node(config={"a": True, "b": [1, 2]})) == [
        "a",
        "b",
    ]
    assert changed_keys(node(config={"gone": 1}, label="A"), node(type="llm", label="B")) == [
        "gone",
        "type",
        "label",
    ]


# ---- the API


async def seed_service(service: Service, wid: str = "wf1", org: str = "org_test") -> None:
    await seed_three(service.store, wid, org)


async def run(service: Service, **body: Any) -> dict[str, Any]:
    r = await service.execute(**body)
    assert r.status_code == 200, r.text
    return await service.wait(r.json()["executionId"])


@pytest.mark.parametrize(
    ("version", "ran", "number", "definition"),
    [("draft", "draft_node", None, DRAFT), ("published", "v1_node", 1, V1), (2, "v2_node", 2, V2)],
)
async def test_execute_runs_the_version_asked_for(
    service: Service, version: Any, ran: str, number: int | None, definition: dict[str, Any]
) -> None:
    await seed_service(service)
    done = await run(service, workflowId="wf1", version=version, inputs={})
    assert done["status"] == "completed" and list(done["nodeResults"]) == [ran]
    assert (done["workflowVersion"], done["workflowHash"]) == (number, expected_hash(definition))


@pytest.mark.parametrize(
    ("inputs", "published", "ran"),
    [
        ({}, True, "v1_node"),
        ({"_triggerType": "schedule"}, True, "v1_node"),
        ({"_triggerType": "manual"}, True, "draft_node"),
        ({}, False, "draft_node"),
    ],
)
async def test_execute_without_version_follows_the_node_backend(
    service: Service, inputs: dict[str, Any], published: bool, ran: str
) -> None:
    await seed_service(service)
    if not published:
        await publish(service.store, "wf1", None)
    done = await run(service, workflowId="wf1", inputs=inputs)
    assert list(done["nodeResults"]) == [ran]
    assert done["workflowVersion"] == (1 if ran == "v1_node" else None)


async def test_default_workflow_version_draft_keeps_the_draft(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_service(service)
    monkeypatch.setenv("DEFAULT_WORKFLOW_VERSION", " Draft ")
    get_settings.cache_clear()
    done = await run(service, workflowId="wf1", inputs={})
    assert list(done["nodeResults"]) == ["draft_node"] and done["workflowVersion"] is None
    done = await run(service, workflowId="wf1", version="published", inputs={})
    assert list(done["nodeResults"]) == ["v1_node"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"workflowId": "wf_none", "version": "published"}, 404, "has no published version"),
        ({"workflowId": "wf1", "version": 9}, 404, "has no version 9"),
        ({"workflowId": "nope", "version": 1}, 404, "not found"),
        ({"workflow": V1, "version": "published"}, 422, "stored workflow"),
        ({"workflowId": "wf1", "version": "latest"}, 422, "version"),
        ({"workflowId": "wf1", "version": True}, 422, "version"),
        ({"workflowId": "wf1", "version": 2**40}, 422, "version"),
        ({"workflowId": "wf1", "version": -1}, 422, "version"),
    ],
)
async def test_execute_version_errors(
    service: Service, body: dict[str, Any], status: int, detail: str
) -> None:
    await seed_service(service)
    await add_workflow(service.store, "wf_none", DRAFT)
    before = await service.count_executions()
    r = await service.execute(inputs={}, **body)
    assert r.status_code == status and detail in r.json()["detail"], r.text
    assert await service.count_executions() == before


async def test_inline_runs_record_their_hash(service: Service) -> None:
    done = await run(service, workflow=V2, version="draft", inputs={})
    assert done["workflowVersion"] is None and done["workflowHash"] == expected_hash(V2)


async def test_retry_runs_and_records_the_original_definition(service: Service) -> None:
    failing = {
        "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "l", "type": "llm", "config": {"prompt": "hi"}},
        ],
        "connections": [{"id": "c", "fromNodeId": "t", "toNodeId": "l"}],
    }
    await seed_service(service)
    await add_version(service.store, "wf1", 3, failing, published=True)
    first = await run(service, workflowId="wf1", inputs={})
    assert first["status"] == "failed" and first["workflowVersion"] == 3
    await add_version(service.store, "wf1", 4, V2, published=True)  # published moves on
    r = await service.client.post(f"/api/executions/{first['executionId']}/retry")
    assert r.status_code == 200, r.text
    again = await service.wait(r.json()["executionId"])
    assert set(again["nodeResults"]) == {"t", "l"} and again["status"] == "failed"
    assert (again["workflowVersion"], again["workflowHash"]) == (3, expected_hash(failing))


async def test_history_lists_show_version_and_hash(service: Service) -> None:
    await seed_service(service)
    done = await run(service, workflowId="wf1", version=2, inputs={})
    history = (await service.client.get("/api/workflows/wf1/executions")).json()
    assert [(e["workflowVersion"], e["workflowHash"]) for e in history["executions"]] == [
        (2, done["workflowHash"])
    ]
    page = (await service.client.get("/api/executions")).json()
    assert page["executions"][0]["workflowVersion"] == 2
    assert page["executions"][0]["workflowHash"] == expected_hash(V2)


async def test_versions_list_and_one(service: Service) -> None:
    await seed_service(service)
    r = await service.client.get("/api/workflows/wf1/versions")
    assert r.status_code == 200
    assert r.json() == {
        "versions": [
            {
                "version": 2,
                "name": "Second",
                "description": None,
                "createdAt": "2026-01-02T00:00:00.000Z",
                "createdByName": None,
                "published": False,
                "hash": expected_hash(V2),
            },
            {
                "version": 1,
                "name": "First",
                "description": "the first",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "createdByName": "Ana",
                "published": True,
                "hash": expected_hash(V1),
            },
        ]
    }
    assert [
        v["version"]
        for v in (await service.client.get("/api/workflows/wf1/versions?limit=1")).json()[
            "versions"
        ]
    ] == [2]
    one = await service.client.get("/api/workflows/wf1/versions/1")
    assert one.status_code == 200
    assert one.json() == {**r.json()["versions"][1], "workflow": V1}
    for path in (
        "/api/workflows/wf1/versions/9",
        "/api/workflows/nope/versions",
        "/api/workflows/nope/versions/1",
    ):
        r = await service.client.get(path)
        detail = r.json()["detail"]
        assert r.status_code == 404 and ("not found" in detail or "no version 9" in detail), path
    for path in (
        "/api/workflows/wf1/versions/abc",
        f"/api/workflows/wf1/versions/{2**40}",
        "/api/workflows/wf1/versions?limit=0",
    ):
        r = await service.client.get(path)
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), path


OLD = {
    "nodes": [
        {"id": "a", "type": "trigger", "label": "Start", "x": 1},
        {"id": "b", "type": "http", "config": {"url": "http://x", "method": "GET"}, "x": 5},
        {"id": "c", "type": "output"},
    ],
    "connections": [
        {"id": "c1", "fromNodeId": "a", "toNodeId": "b"},
        {"id": "c2", "fromNodeId": "b", "toNodeId": "c"},
    ],
}
NEW = {
    "nodes": [
        {"id": "a", "type": "trigger", "label": "Start", "x": 100, "status": "completed"},
        {"id": "b", "type": "http", "label": "Fetch", "config": {"url": "http://y", "timeout": 5}},
        {"id": "d", "type": "output"},
    ],
    "connections": [
        {"id": "new-id", "fromNodeId": "a", "toNodeId": "b"},
        {"id": "c3", "fromNodeId": "b", "toNodeId": "d", "outputType": "true"},
    ],
}


async def test_versions_diff(service: Service) -> None:
    await add_workflow(service.store, "wf1", NEW)
    await add_version(service.store, "wf1", 1, OLD)
    await add_version(service.store, "wf1", 2, NEW)
    r = await service.client.get("/api/workflows/wf1/versions/diff?from=1&to=draft")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "nodes": {
            "added": ["d"],
            "removed": ["c"],
            "changed": [{"id": "b", "keys": ["method", "timeout", "url", "label"]}],
        },
        "connections": {
            "added": [{"id": "c3", "fromNodeId": "b", "toNodeId": "d", "outputType": "true"}],
            "removed": [{"id": "c2", "fromNodeId": "b", "toNodeId": "c"}],
        },
    }
    same = await service.client.get("/api/workflows/wf1/versions/diff?from=draft&to=2")
    assert same.json() == {
        "nodes": {"added": [], "removed": [], "changed": []},
        "connections": {"added": [], "removed": []},
    }
    back = (await service.client.get("/api/workflows/wf1/versions/diff?from=2&to=1")).json()
    assert back["nodes"]["added"] == ["c"] and back["nodes"]["removed"] == ["d"]
    for query, status in (("from=1&to=9", 404), ("from=x&to=1", 422), ("to=1", 422)):
        r = await service.client.get(f"/api/workflows/wf1/versions/diff?{query}")
        assert r.status_code == status and isinstance(r.json()["detail"], str), query
    r = await service.client.get("/api/workflows/nope/versions/diff?from=1&to=2")
    assert r.status_code == 404


async def test_versions_are_scoped_by_organization(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS", "service-key, key-a@org_a, key-b@org_b")
    get_settings.cache_clear()
    await seed_three(service.store, "wf_a", "org_a")
    for key, status in (("key-a", 200), ("key-b", 404), ("service-key", 200)):
        headers = {"X-API-Key": key}
        for path in ("versions", "versions/1", "versions/diff?from=1&to=2"):
            r = await service.client.get(f"/api/workflows/wf_a/{path}", headers=headers)
            assert r.status_code == status, (key, path, r.text)
        r = await service.client.post(
            "/api/workflows/execute",
            json={"workflowId": "wf_a", "version": 1, "inputs": {}},
            headers=headers,
        )
        assert r.status_code == status, r.text


async def test_versions_over_the_limits(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_WORKFLOW_NODES", "2")
    monkeypatch.setenv("MAX_REQUEST_BYTES", "2000")
    get_settings.cache_clear()
    many = {"nodes": [{"id": f"n{i}", "type": "trigger"} for i in range(3)], "connections": []}
    huge = trigger_only("h", config={"text": "x" * 3000})
    await add_workflow(service.store, "wf1", DRAFT)
    await add_version(service.store, "wf1", 1, many)
    await add_version(service.store, "wf1", 2, huge)
    await add_version(service.store, "wf1", 3, V1)
    listed = (await service.client.get("/api/workflows/wf1/versions")).json()["versions"]
    assert [v["hash"] for v in listed] == [expected_hash(V1), None, None]
    for path, status in (
        ("versions/1", 422),
        ("versions/2", 413),
        ("versions/diff?from=1&to=3", 422),
        ("versions/diff?from=3&to=2", 413),
    ):
        r = await service.client.get(f"/api/workflows/wf1/{path}")
        assert r.status_code == status and "MAX_" in r.json()["detail"], (path, r.text)
    r = await service.execute(workflowId="wf1", version=1, inputs={})
    assert r.status_code == 422 and "MAX_WORKFLOW_NODES" in r.json()["detail"]


async def test_versions_that_are_not_json_text(service: Service) -> None:
    await add_workflow(service.store, "wf1", DRAFT)
    await add_version(
        service.store, "wf1", 1, '{"nodes": [{"id": "a", "type": "trigger", "label": "\\ud800"}]}'
    )
    await add_version(
        service.store, "wf1", 2, '{"nodes": [{"id": "a", "type": "trigger", "x": NaN}]}'
    )
    await add_version(service.store, "wf1", 3, "not json")
    listed = (await service.client.get("/api/workflows/wf1/versions")).json()["versions"]
    assert [v["hash"] for v in listed] == [None, None, None]
    for path in ("versions/1", "versions/2", "versions/3", "versions/diff?from=1&to=draft"):
        r = await service.client.get(f"/api/workflows/wf1/{path}")
        assert r.status_code == 422 and "JSON" in r.json()["detail"], (path, r.text)
