"""Store contract of the dashboard's executions list (`list_all_executions`), on SQLite,
PostgreSQL and the in-memory store: order, cursor paging, filters, organization scope, counts."""

from typing import Any

from database import Store
from database.interfaces import OVERVIEW_COLUMNS, ExecutionQuery, NewExecution
from tests.support import seed_rows


def t(second: int) -> str:
    return f"2026-01-01T00:00:{second:02d}.000Z"


ROWS: list[dict[str, Any]] = [
    # id, workflow, org, status, createdAt (two rows share a createdAt: the id breaks the tie)
    {"id": "e1", "workflowId": "wf_a", "organizationId": "org_a", "status": "completed"},
    {"id": "e2", "workflowId": "wf_b", "organizationId": "org_b", "status": "running"},
    {"id": "e3", "workflowId": "wf_a", "organizationId": "org_a", "status": "pending"},
    {"id": "e4", "workflowId": "wf_a", "organizationId": "org_a", "status": "running"},
    {"id": "e5", "workflowId": "inline_x", "organizationId": "org_a", "status": "failed"},
    {"id": "e6", "workflowId": "wf_b", "organizationId": "org_b", "status": "pending"},
]
CREATED = {"e1": t(1), "e2": t(2), "e3": t(3), "e4": t(3), "e5": t(5), "e6": None}
NEWEST_FIRST = ["e5", "e4", "e3", "e2", "e1", "e6"]  # no createdAt: last


async def seed(store: Store) -> None:
    """Rows as the Node backend writes them (createdAt chosen), the service's own state for
    e1 (its workflow name), and the stored workflows whose names the rest show."""
    await seed_rows(store, "organizations", [{"id": o, "name": o} for o in ("org_a", "org_b")])
    await seed_rows(
        store,
        "workflows",
        [
            {"id": "wf_a", "organizationId": "org_a", "name": "Alpha", "data": "{}"},
            {"id": "wf_b", "organizationId": "org_b", "name": "Beta", "data": "{}"},
        ],
    )
    await seed_rows(
        store, "workflow_executions", [{**r, "createdAt": CREATED[r["id"]]} for r in ROWS]
    )
    await seed_rows(
        store,
        "wos_executions",
        [
            {
                "executionId": "e1",
                "seq": 1,
                "workflowName": "Alpha as it was run",
                "definition": "{}",
                "requestedMode": "inline",
                "state": "done",
                "createdAt": t(1),
            }
        ],
    )


async def page_ids(store: Store, **kw: Any) -> list[str]:
    rows, _ = await store.list_all_executions(ExecutionQuery(**{"limit": 100, **kw}))
    return [r["id"] for r in rows]


async def test_rows_are_newest_first_with_the_workflow_name(store: Store) -> None:
    await seed(store)
    rows, counts = await store.list_all_executions(ExecutionQuery(limit=100))
    assert [r["id"] for r in rows] == NEWEST_FIRST
    assert all(set(r) == set(OVERVIEW_COLUMNS) for r in rows)
    names = {r["id"]: r["workflowName"] for r in rows}
    assert names == {
        "e1": "Alpha as it was run",  # the service's own record wins
        "e2": "Beta",
        "e3": "Alpha",
        "e4": "Alpha",
        "e5": None,  # an inline workflow has no name
        "e6": "Beta",
    }
    e2 = next(r for r in rows if r["id"] == "e2")
    assert (e2["workflowId"], e2["organizationId"], e2["status"]) == ("wf_b", "org_b", "running")
    assert counts == {"pending": 2, "running": 2}


async def test_the_cursor_walks_every_row_once_in_order(store: Store) -> None:
    await seed(store)
    seen: list[str] = []
    before = None
    for _ in range(10):
        rows, _ = await store.list_all_executions(ExecutionQuery(limit=2, before=before))
        if not rows:
            break
        assert len(rows) <= 2
        seen += [r["id"] for r in rows]
        before = (rows[-1]["createdAt"], rows[-1]["id"])
    assert seen == NEWEST_FIRST


async def test_status_and_workflow_filters_leave_the_counts_to_the_scope(store: Store) -> None:
    await seed(store)
    assert await page_ids(store, status="running") == ["e4", "e2"]
    assert await page_ids(store, workflow_id="wf_a") == ["e4", "e3", "e1"]
    rows, counts = await store.list_all_executions(
        ExecutionQuery(limit=1, status="completed", workflow_id="wf_a")
    )
    assert [r["id"] for r in rows] == ["e1"]
    assert counts == {"pending": 1, "running": 1}  # of wf_a, whatever the status filter
    rows, counts = await store.list_all_executions(
        ExecutionQuery(limit=5, workflow_id="nope", before=(t(9), "z"))
    )
    assert (rows, counts) == ([], {"pending": 0, "running": 0})


async def test_an_organization_sees_only_its_rows_and_counts(store: Store) -> None:
    await seed(store)
    assert await page_ids(store, organization="org_b") == ["e2", "e6"]
    rows, counts = await store.list_all_executions(ExecutionQuery(limit=100, organization="org_a"))
    assert [r["id"] for r in rows] == ["e5", "e4", "e3", "e1"]
    assert counts == {"pending": 1, "running": 1}
    assert await page_ids(store, organization="org_b", workflow_id="wf_a") == []
    assert await page_ids(store, organization="org_c") == []


async def test_cursors_inside_ties_and_rows_without_created_at(store: Store) -> None:
    await seed(store)
    assert await page_ids(store, before=(t(3), "e4")) == ["e3", "e2", "e1", "e6"]
    assert await page_ids(store, before=(t(3), "e3")) == ["e2", "e1", "e6"]
    assert await page_ids(store, before=(None, "e7")) == ["e6"]
    assert await page_ids(store, before=(None, "e6")) == []


async def test_executions_the_service_creates_are_listed(store: Store) -> None:
    await seed(store)
    await store.create_execution(
        NewExecution(
            execution_id="svc1",
            workflow_id="wf_a",
            workflow_name="Alpha",
            organization_id="org_a",
            inputs={},
            definition='{"nodes": []}',
            mode="inline",
        )
    )
    rows, counts = await store.list_all_executions(ExecutionQuery(limit=1))
    assert [(r["id"], r["status"], r["workflowName"]) for r in rows] == [
        ("svc1", "pending", "Alpha")
    ]
    assert counts == {"pending": 3, "running": 2}
