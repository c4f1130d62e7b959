"""Issue 9, keys and organizations: the attacks of an organization key on another org's
executions, workflows and data, mismatched body orgs, hashed and wrong keys, and data nodes
reaching another org's entity, table or file. Table-driven, on every store (SQLite, PostgreSQL,
memory) through the in-process service and its inline worker."""

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from config import ApiKey, Settings, get_settings, parse_api_keys
from database.interfaces import GenericSave, NewExecution, Store
from database.sql import SqlStore
from errors import EntityNotFound, EntityStoreError, NodeConfigError
from tasks.context import RunContext
from tasks.registry import get_spec
from tests.conftest import MakeResources, Service
from tests.support import seed_rows

A_KEY, B_KEY, SERVICE_KEY = "key-of-org-a", "key-of-org-b", "service-key"
A = {"X-API-Key": A_KEY}
B = {"Authorization": f"Bearer {B_KEY}"}
SVC = {"X-API-Key": SERVICE_KEY}
SIMPLE = {
    "nodes": [{"id": "t", "type": "trigger"}, {"id": "m", "type": "manualInput"}],
    "connections": [{"id": "c", "fromNodeId": "t", "toNodeId": "m"}],
}
FETCH = {
    "nodes": [
        {"id": "t", "type": "trigger"},
        {"id": "f", "type": "fetchData", "config": {"entityId": "ent_a"}},
    ],
    "connections": [{"id": "c", "fromNodeId": "t", "toNodeId": "f"}],
}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A service key, org_a's key given hashed, org_b's in plain text; images in tmp_path."""
    monkeypatch.setenv("API_KEYS", f"{SERVICE_KEY}, sha256:{sha(A_KEY)}@org_a, {B_KEY}@org_b")
    monkeypatch.setenv("IMAGE_DIR", str(tmp_path / "images"))
    get_settings.cache_clear()


async def seed_orgs(store: Store) -> None:
    """org_a and org_b, a stored workflow of each and one of none, and org_a's entity `ent_a`
    with one record."""
    await seed_rows(store, "organizations", [{"id": o, "name": o} for o in ("org_a", "org_b")])
    await seed_rows(
        store,
        "workflows",
        [
            {"id": "wf_a", "organizationId": "org_a", "name": "A", "data": json.dumps(FETCH)},
            {"id": "wf_b", "organizationId": "org_b", "name": "B", "data": json.dumps(SIMPLE)},
            {"id": "wf_none", "organizationId": None, "name": "N", "data": json.dumps(FETCH)},
        ],
    )
    await seed_rows(
        store, "entities", [{"id": "ent_a", "organizationId": "org_a", "name": "Machines"}]
    )
    await seed_rows(
        store, "properties", [{"id": "p", "entityId": "ent_a", "name": "Name", "type": "text"}]
    )
    await seed_rows(store, "records", [{"id": "r1", "entityId": "ent_a", "createdAt": "t"}])
    await seed_rows(
        store, "record_values", [{"id": "v1", "recordId": "r1", "propertyId": "p", "value": "x"}]
    )


async def submit(service: Service, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await service.client.post("/api/workflows/execute", json=body, headers=headers)


async def finished(service: Service, eid: str) -> dict[str, Any]:
    """The execution once it ended (read with the service key)."""
    service.client.headers.update(SVC)
    try:
        return await service.wait(eid)
    finally:
        del service.client.headers["X-API-Key"]


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("k1", [ApiKey(hashlib.sha256(b"k1").digest(), None)]),
        (
            " k1@org , k2 ",
            [
                ApiKey(hashlib.sha256(b"k1").digest(), "org"),
                ApiKey(hashlib.sha256(b"k2").digest(), None),
            ],
        ),
        (f"sha256:{sha('k1')}", [ApiKey(hashlib.sha256(b"k1").digest(), None)]),
        (f"SHA256:{sha('k1').upper()}@o", [ApiKey(hashlib.sha256(b"k1").digest(), "o")]),
        ("a@b@org", [ApiKey(hashlib.sha256(b"a@b").digest(), "org")]),
        ("", []),
    ],
)
def test_api_keys_entries(text: str, expected: list[ApiKey]) -> None:
    assert list(parse_api_keys(text)) == expected


@pytest.mark.parametrize("text", ["k@", "@org", "sha256:abc", f"sha256:{'z' * 64}"])
def test_malformed_api_keys_entries_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_api_keys(text)


def test_a_malformed_api_keys_setting_is_refused_without_echoing_the_keys() -> None:
    with pytest.raises(ValueError) as info:
        Settings(_env_file=None, API_KEYS="plaintext-secret, other-secret@")  # type: ignore[call-arg]
    assert "API_KEYS" in str(info.value) and "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (A, 404),  # hashed org key: accepted
        ({"Authorization": f"Bearer {A_KEY}"}, 404),
        (B, 404),
        (SVC, 404),
        ({"X-API-Key": sha(A_KEY)}, 401),  # the hash itself is not a key
        ({"X-API-Key": "wrong"}, 401),
        ({"X-API-Key": A_KEY + "x"}, 401),
        ({"Authorization": f"Bearer {A_KEY[:-1]}"}, 401),
        ({}, 401),
    ],
)
async def test_keys_plain_hashed_and_wrong(
    service: Service, keys: None, headers: dict[str, str], status: int
) -> None:
    r = await service.client.get("/api/executions/nope", headers=headers)
    assert r.status_code == status and isinstance(r.json()["detail"], str)


# --- another org's execution through every endpoint -----------------------------------------

ENDPOINTS = [
    ("GET", "/api/executions/{eid}", 200),
    ("GET", "/api/executions/{eid}/logs", 200),
    ("GET", "/api/executions/{eid}/images/m.png", 200),
    ("POST", "/api/executions/{eid}/retry", 409),  # completed: not retryable, but found
    ("POST", "/api/executions/{eid}/cancel", 200),  # ended: success false, but found
]


@pytest.mark.parametrize(("method", "path", "own_status"), ENDPOINTS)
async def test_another_orgs_execution_is_unknown_on_every_endpoint(
    service: Service, keys: None, method: str, path: str, own_status: int
) -> None:
    r = await submit(service, A, workflow=SIMPLE, inputs={})
    assert r.status_code == 200, r.text
    eid = r.json()["executionId"]
    assert (await finished(service, eid))["organizationId"] == "org_a"  # absent → the key's
    image = Path(get_settings().IMAGE_DIR) / f"{eid}_m.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\x89PNG")
    unknown = await service.client.request(method, path.format(eid="e0000000000000ff"), headers=A)
    theirs = await service.client.request(method, path.format(eid=eid), headers=B)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["detail"] == unknown.json()["detail"].replace("e0000000000000ff", eid)
    for headers in (A, SVC):  # its own org, and a service key, see it
        mine = await service.client.request(method, path.format(eid=eid), headers=headers)
        assert mine.status_code == own_status, mine.text
    assert (await finished(service, eid))["status"] == "completed"


async def test_history_lists_only_the_keys_org(service: Service, keys: None) -> None:
    await seed_orgs(service.store)
    for headers in (A, B, SVC):
        body = {"workflowId": "wf_none", "inputs": {}}
        if headers is SVC:
            body["organizationId"] = "org_b"
        r = await submit(service, headers, **body)
        assert r.status_code == 200, r.text
        await finished(service, r.json()["executionId"])
    lists = {}
    for name, headers in (("a", A), ("b", B), ("svc", SVC)):
        r = await service.client.get("/api/workflows/wf_none/executions", headers=headers)
        assert r.status_code == 200, r.text
        lists[name] = r.json()["total"]
    assert lists == {"a": 1, "b": 2, "svc": 3}
    r = await service.client.get("/api/workflows/wf_a/executions", headers=B)
    assert r.status_code == 404 and r.json()["detail"] == "Workflow wf_a not found"


# --- submits: body org, stored workflows' orgs, idempotency ----------------------------------

SUBMITS = [
    # (caller, body, status, row organizationId, fetchData of org_a's entity succeeds)
    (A, {"workflowId": "wf_b", "organizationId": "org_b"}, 403, None, None),  # before the 404
    (A, {"workflow": SIMPLE, "organizationId": "org_b"}, 403, None, None),
    (A, {"workflowId": "wf_b"}, 404, None, None),
    (A, {"workflowId": "wf_a"}, 200, "org_a", True),
    (A, {"workflowId": "wf_a", "organizationId": "org_a"}, 200, "org_a", True),
    (A, {"workflowId": "wf_none"}, 200, "org_a", True),
    (B, {"workflowId": "wf_none"}, 200, "org_b", False),
    (B, {"workflow": FETCH}, 200, "org_b", False),
    (SVC, {"workflowId": "wf_a", "organizationId": "org_b"}, 404, None, None),
    (SVC, {"workflowId": "wf_a"}, 200, None, True),  # row keeps null, data is wf_a's org
    (SVC, {"workflowId": "wf_a", "organizationId": "org_a"}, 200, "org_a", True),
    (SVC, {"workflowId": "wf_none", "organizationId": "org_a"}, 200, "org_a", True),
    (SVC, {"workflowId": "wf_none", "organizationId": "org_b"}, 200, "org_b", False),
    (SVC, {"workflow": FETCH, "organizationId": "org_b"}, 200, "org_b", False),
    (SVC, {"workflow": FETCH}, 200, None, False),  # no org at all: only data without one
]


@pytest.mark.parametrize(("caller", "body", "status", "row_org", "fetched"), SUBMITS)
async def test_submit_orgs(
    service: Service,
    keys: None,
    caller: dict[str, str],
    body: dict[str, Any],
    status: int,
    row_org: str | None,
    fetched: bool | None,
) -> None:
    await seed_orgs(service.store)
    r = await submit(service, caller, inputs={}, **body)
    assert r.status_code == status, r.text
    if status != 200:
        assert isinstance(r.json()["detail"], str)
        if status == 404:
            assert r.json()["detail"] == f"Workflow {body['workflowId']} not found"
        assert await service.count_executions() == 0
        return
    final = await finished(service, r.json()["executionId"])
    assert final["organizationId"] == row_org
    if fetched:
        assert final["status"] == "completed", final
        assert final["nodeResults"]["f"]["outputData"][0]["Name"] == "x"
    elif "f" in final["nodeResults"]:
        assert final["status"] == "failed"
        assert final["error"] and "Entity 'ent_a' not found" in final["error"]


async def test_retry_keeps_the_data_org(service: Service, keys: None) -> None:
    await seed_orgs(service.store)
    missing = json.dumps(FETCH).replace("ent_a", "ent_gone")
    await seed_rows(
        service.store,
        "workflows",
        [{"id": "wf_fails", "organizationId": "org_a", "name": "F", "data": missing}],
    )
    r = await submit(service, SVC, workflowId="wf_fails", inputs={})
    first = await finished(service, r.json()["executionId"])
    assert first["status"] == "failed" and first["organizationId"] is None
    for headers, status in ((B, 404), (A, 404), (SVC, 200)):  # the row has no org
        r = await service.client.post(
            f"/api/executions/{first['executionId']}/retry", headers=headers
        )
        assert r.status_code == status, r.text
    again = await service.store.get_execution(r.json()["executionId"])
    assert again is not None and again["dataOrganizationId"] == "org_a"
    assert again["organizationId"] is None


async def test_idempotency_keys_are_per_org(service: Service, keys: None) -> None:
    headers = {"Idempotency-Key": "same"}
    ids = {}
    for name, key in (("a", A), ("b", B), ("a2", A)):
        r = await submit(service, {**key, **headers}, workflow=SIMPLE, inputs={})
        assert r.status_code == 200, r.text
        ids[name] = r.json()["executionId"]
    assert ids["a"] == ids["a2"] != ids["b"]


NODE_EXECUTE = [
    # (caller, workflowId, fetch of org_a's entity succeeds)
    (A, None, True),
    (B, None, False),
    (B, "wf_a", False),  # the key's org, whatever workflow it names
    (SVC, "wf_a", True),  # the stored workflow's org
    (SVC, "wf_b", False),
    (SVC, None, False),  # none
]


@pytest.mark.parametrize(("caller", "workflow_id", "fetched"), NODE_EXECUTE)
async def test_node_execute_acts_for_the_right_org(
    service: Service,
    keys: None,
    caller: dict[str, str],
    workflow_id: str | None,
    fetched: bool,
) -> None:
    await seed_orgs(service.store)
    r = await service.client.post(
        "/api/nodes/execute",
        json={
            "workflowId": workflow_id,
            "nodeId": "f",
            "nodeType": "fetchData",
            "node": {"config": {"entityId": "ent_a"}},
        },
        headers=caller,
    )
    assert r.status_code == 200, r.text
    assert r.json()["success"] is fetched, r.json()
    if not fetched:
        assert "Entity 'ent_a' not found" in r.json()["error"]


# --- data of another org: entities, generic tables, files ------------------------------------


@pytest.mark.parametrize(
    ("organization", "found"), [("org_a", True), ("org_b", False), (None, False)]
)
async def test_entities_of_another_org_are_not_found(
    store: Store, organization: str | None, found: bool
) -> None:
    await seed_orgs(store)
    for call in (
        store.entities.fetch_entity_records("ent_a", organization),
        store.entities.save_entity_records("ent_a", organization, [], {}),
    ):
        if found:
            await call
        else:
            with pytest.raises(EntityNotFound):
                await call


def generic(rows: list[tuple[str, str]], org: str | None, *, upsert: bool = True) -> GenericSave:
    return GenericSave(
        "devices",
        rows,
        upsert=upsert,
        workflow_id="w",
        execution_id="e",
        now="t",
        organization_id=org,
    )


async def read_devices(store: Store) -> dict[str, tuple[str, str | None]]:
    """id → (data, organizationId) of every `devices` row."""
    if isinstance(store, SqlStore):
        async with store.read() as conn:
            rows = await conn.execute(sa.text('SELECT id, data, "organizationId" FROM devices'))
            return {i: (d, o) for i, d, o in rows.all()}
    _, table = store.entities.tables["devices"]  # type: ignore[attr-defined]
    return {i: (r["data"], r["organizationId"]) for i, r in table.items()}


async def test_generic_tables_are_filtered_by_org(store: Store) -> None:
    save = store.entities.save_generic_records
    assert await save(generic([("d1", '"a"')], "org_a")) == 0
    # org_b's upsert of the same id never updates org_a's row (the id is taken: refused)
    with pytest.raises(EntityStoreError, match="already exists"):
        await save(generic([("d1", '"b"')], "org_b"))
    with pytest.raises(EntityStoreError, match="already exists"):
        await save(generic([("d1", '"none"')], None))
    assert await save(generic([("d2", '"b"')], "org_b")) == 0
    assert await save(generic([("d2", '"b2"')], "org_b")) == 1
    assert await read_devices(store) == {"d1": ('"a"', "org_a"), "d2": ('"b2"', "org_b")}


async def test_a_table_without_the_org_column_serves_only_runs_without_org(
    store: Store,
) -> None:
    legacy = ("id", "data", "workflowId", "executionId", "createdAt", "updatedAt")
    if isinstance(store, SqlStore):
        async with store.write() as conn:
            columns = ", ".join(
                f'"{c}" TEXT' + (" PRIMARY KEY" if c == "id" else "") for c in legacy
            )
            await conn.execute(sa.text(f"CREATE TABLE devices ({columns})"))
    else:
        store.entities.put_table("devices", legacy)  # type: ignore[attr-defined]
    with pytest.raises(EntityStoreError, match="lacks organizationId"):
        await store.entities.save_generic_records(generic([("d1", "{}")], "org_a"))
    assert await store.entities.save_generic_records(generic([("d1", "{}")], None)) == 0


def ctx(resources: Any, organization: str | None, node_type: str = "excelInput") -> RunContext:
    return RunContext(
        execution_id="e",
        workflow_id="w",
        organization_id=organization,
        inputs={},
        node_id="n",
        node_type=node_type,
        node_label=node_type,
        resources=resources,
    )


@pytest.mark.parametrize(
    ("organization", "file_path", "rows"),
    [
        ("org_a", "a.csv", [{"v": "a"}]),
        ("org_a", "../org_b/b.csv", None),  # outside its folder
        ("org_b", "b.csv", [{"v": "b"}]),
        ("org_b", "a.csv", None),  # another org's file name is not found in its folder
        (None, "none.csv", [{"v": "none"}]),  # no org: today's place
        (None, "a.csv", None),
        ("org_a", "none.csv", None),
        ("../x", "a.csv", None),  # an org id that is not a folder name
    ],
)
async def test_upload_files_are_read_from_the_orgs_folder(
    make_resources: MakeResources,
    tmp_path: Path,
    organization: str | None,
    file_path: str,
    rows: list[dict[str, str]] | None,
) -> None:
    uploads = tmp_path / "uploads"
    for folder, value in (("org_a", "a"), ("org_b", "b")):
        (uploads / folder).mkdir(parents=True)
        (uploads / folder / f"{value}.csv").write_text(f"v\n{value}\n")
    (uploads / "none.csv").write_text("v\nnone\n")
    resources = make_resources(UPLOAD_DIR=str(uploads))
    spec = get_spec("excelInput")
    call = spec.handler(
        spec.config.model_validate({"filePath": file_path}), None, ctx(resources, organization)
    )
    if rows is None:
        with pytest.raises(NodeConfigError):
            await call
    else:
        assert (await call)["outputData"] == rows


async def test_claim_carries_the_data_org(store: Store) -> None:
    for eid, row_org, data_org in (("e1", None, "org_a"), ("e2", "org_b", None)):
        await store.create_execution(
            NewExecution(
                execution_id=eid,
                workflow_id="w",
                workflow_name=None,
                organization_id=row_org,
                inputs={},
                definition=json.dumps(SIMPLE),
                mode="inline",
                data_organization_id=data_org,
            )
        )
    claims = await store.claim("owner", 10, 30)
    assert {c.execution_id: c.organization_id for c in claims} == {"e1": "org_a", "e2": "org_b"}


# --- the embedded Prefect API ----------------------------------------------------------------


@pytest.mark.slow
def test_embedded_prefect_api_refuses_requests_without_its_auth_string(
    prefect_service: Any,
) -> None:
    svc = prefect_service
    url = svc.prefect_url()
    auth = svc.prefect_auth()
    assert auth and len(auth) >= 32
    query = {"flow_runs": {}}
    for headers in (
        {},
        {"Authorization": "Basic " + base64.b64encode(b"guess").decode()},
        {"Authorization": f"Bearer {auth}"},
    ):
        r = httpx.post(f"{url}/flow_runs/filter", json=query, headers=headers, timeout=10)
        assert r.status_code in (401, 403), r.text
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the workers' probe
    r = httpx.post(f"{url}/flow_runs/filter", json=query, headers=svc.prefect_headers(), timeout=10)
    assert r.status_code == 200, r.text
    svc.add_workflow("wf_auth", SIMPLE)
    final = svc.wait(svc.execute("wf_auth", {}))
    assert final["status"] == "completed" and final["mode"] == "prefect", final
    assert auth not in svc.log_text()
