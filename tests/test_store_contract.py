"""The store contract: every test runs on SQLite, PostgreSQL and the in-memory store (the `store`
fixture), so a backend passes when it behaves like the others."""

import asyncio
import json
from typing import Any

import pytest

from database import Checkpoint, LogRow, NewExecution, RunEnd, RunStart, Store
from database.interfaces import GenericSave, IdempotencyKey, NewRecord
from errors import DuplicateExecution, EntityNotFound, EntityStoreError
from states import ExecutionStatus
from tests.conftest import Service
from tests.support import seed_rows


def new(eid: str, workflow_id: str = "wf1", org: str | None = "org") -> NewExecution:
    return NewExecution(
        execution_id=eid,
        workflow_id=workflow_id,
        workflow_name="WF",
        organization_id=org,
        inputs={"x": 1},
        definition='{"nodes": []}',
        mode="inline",
    )


async def add(store: Store, eid: str, **kw: Any) -> None:
    await store.create_execution(new(eid, **kw))


async def test_concurrent_submits_are_group_committed_in_submission_order(store: Store) -> None:
    ids = [f"e{i:02d}" for i in range(40)]
    await asyncio.gather(*(add(store, eid) for eid in ids))
    claims = await store.claim("w1", 100, 15.0)
    assert [c.execution_id for c in claims] == ids
    for eid in ids:
        row = await store.get_execution(eid)
        assert row is not None and row["status"] == "pending"


async def test_create_execution_commits_pending_row(store: Store) -> None:
    await add(store, "e1")
    row = await store.get_execution("e1")
    assert row is not None
    assert (row["status"], row["organizationId"], json.loads(row["inputs"])) == (
        "pending",
        "org",
        {"x": 1},
    )
    assert row["createdAt"].endswith("Z") and row["triggerType"] == "manual"
    assert await store.get_execution("nope") is None


async def test_claim_takes_queued_in_submission_order_once(store: Store) -> None:
    for eid in ("e1", "e2", "e3"):
        await add(store, eid)
    first = await store.claim("w:1", 2, 15)
    assert [c.execution_id for c in first] == ["e1", "e2"]
    assert [c.execution_id for c in await store.claim("w:2", 5, 15)] == ["e3"]
    assert await store.claim("w:2", 5, 15) == []


async def test_expired_lease_is_claimed_again_as_a_resume(store: Store) -> None:
    await add(store, "e1")
    await store.claim("dead:1", 1, 0.01)
    await asyncio.sleep(0.05)
    (claim,) = await store.claim("w:2", 1, 15)
    assert claim.attempts == 2
    row = await store.get_execution("e1")
    assert row is not None and row["attempts"] == 2 and row["resumedAt"] is not None


async def test_renewed_lease_is_not_stolen(store: Store) -> None:
    await add(store, "e1")
    await store.claim("w:1", 1, 0.2)
    await store.renew_leases("w:1", ["e1"], 15)
    await asyncio.sleep(0.3)
    assert await store.claim("w:2", 1, 15) == []


async def test_release_instance_frees_a_previous_incarnation(store: Store) -> None:
    await add(store, "e1")
    await store.claim("host:8000:123:ab", 1, 60)
    await store.release_instance("host:8001")
    assert await store.claim("w", 1, 15) == []
    await store.release_instance("host:8000")
    assert [c.execution_id for c in await store.claim("w", 1, 15)] == ["e1"]


async def test_checkpoint_and_finish_never_overwrite_cancel(store: Store) -> None:
    await add(store, "e1")
    await store.claim("w", 1, 15)
    assert await store.start("e1", RunStart(2, "inline", None))
    rows = [LogRow("a", "trigger", "A", "running")]
    assert await store.checkpoint(
        "e1",
        Checkpoint(
            rows,
            current_node_id="a",
            node_results="{}",
            counts={"completedNodes": 0, "failedNodes": 0, "skippedNodes": 0},
        ),
    )
    assert await store.cancel("e1") == ("running", True)
    late = [
        LogRow("a", "trigger", "A", "completed", output_json="{}", duration_ms=3),
        LogRow("b", "output", "B", "running"),
    ]
    assert not await store.checkpoint(
        "e1",
        Checkpoint(
            late,
            current_node_id="b",
            node_results='{"a": {}}',
            counts={"completedNodes": 1, "failedNodes": 0, "skippedNodes": 0},
        ),
    )
    assert not await store.finish("e1", RunEnd(status="completed", error=None, node_results="{}"))
    row = await store.get_execution("e1")
    assert row is not None
    assert (row["status"], row["error"], row["currentNodeId"]) == (
        "cancelled",
        "Execution cancelled by user",
        "a",
    )
    assert row["completedAt"] is not None
    logs = await store.get_logs("e1")
    assert [(r["nodeId"], r["status"]) for r in logs] == [("a", "running"), ("a", "completed")]


async def test_cancel_answers_for_every_status(store: Store) -> None:
    assert await store.cancel("missing") == (None, False)
    await add(store, "e1")
    assert await store.cancel("e1") == ("pending", True)
    assert await store.cancel("e1") == ("cancelled", False)
    assert await store.claim("w", 5, 15) == []  # a cancelled queued run is never started


async def test_logs_keep_insertion_order_and_last_n(store: Store) -> None:
    await add(store, "e1")
    await store.claim("w", 1, 15)
    await store.start("e1", RunStart(12, "inline", None))
    for i in range(12):
        await store.checkpoint(
            "e1",
            Checkpoint(
                [LogRow(f"n{i}", "t", "L", "running")],
                current_node_id=f"n{i}",
                node_results=None,
                counts={},
            ),
        )
    assert [r["nodeId"] for r in await store.get_logs("e1")] == [f"n{i}" for i in range(12)]
    assert [r["nodeId"] for r in await store.get_logs("e1", last=10)] == [
        f"n{i}" for i in range(2, 12)
    ]


async def test_list_executions_newest_first(store: Store) -> None:
    for eid in ("e1", "e2"):
        await add(store, eid)
        await asyncio.sleep(0.002)
    rows, total = await store.list_executions("wf1", 1)
    assert total == 2 and [r["id"] for r in rows] == ["e2"]


def checkpoint_rows(*rows: tuple[str, str]) -> list[LogRow]:
    return [LogRow(node, "t", node.upper(), status) for node, status in rows]  # type: ignore[arg-type]


async def test_get_execution_answers_the_same_columns_everywhere(store: Store) -> None:
    await add(store, "e1")
    row = await store.get_execution("e1")
    assert row is not None
    assert set(row) == {
        *("id", "workflowId", "organizationId", "status", "triggerType", "inputs"),
        *("currentNodeId", "nodeResults", "finalOutput", "error", "createdAt", "startedAt"),
        *("completedAt", "triggeredByName", "versionNumber", "workflowName", "definition"),
        *("requestedMode", "mode", "modeReason", "attempts", "resumedAt", "retryOf"),
        *("flowRunId", "totalNodes", "completedNodes", "failedNodes", "skippedNodes", "state"),
        *("dataOrganizationId", "callback", "priority"),
        *("workflowVersion", "workflowHash"),
    }
    assert (row["state"], row["attempts"], row["completedNodes"]) == ("queued", 0, 0)


async def test_get_workflow_reads_the_node_backends_row(store: Store) -> None:
    await seed_rows(
        store,
        "workflows",
        [{"id": "w1", "organizationId": None, "name": "Mine", "data": "{}"}],
    )
    assert await store.get_workflow("w1") == {
        "id": "w1",
        "name": "Mine",
        "data": "{}",
        "organizationId": None,
    }
    assert await store.get_workflow("nope") is None


async def test_a_failing_operation_fails_only_its_own_waiter(store: Store) -> None:
    """Bug 3: a create that violates a constraint, group-committed with an unrelated finish and
    a checkpoint, fails alone; the others commit."""
    for eid in ("e1", "e2", "e3"):
        await add(store, eid)
    await store.claim("w", 5, 15)
    for eid in ("e2", "e3"):
        await store.start(eid, RunStart(1, "inline", None))
    duplicate, finished, checkpointed = await asyncio.gather(
        add(store, "e1"),
        store.finish("e2", RunEnd(status=ExecutionStatus.COMPLETED, error=None, node_results="{}")),
        store.checkpoint(
            "e3",
            Checkpoint(
                checkpoint_rows(("a", "running")),
                current_node_id="a",
                node_results=None,
                counts={},
            ),
        ),
        return_exceptions=True,
    )
    assert isinstance(duplicate, DuplicateExecution)
    assert (finished, checkpointed) == (True, True)
    e2, e3 = await store.get_execution("e2"), await store.get_execution("e3")
    assert e2 is not None and e2["status"] == "completed"
    assert e3 is not None and e3["currentNodeId"] == "a"
    assert [r["nodeId"] for r in await store.get_logs("e3")] == ["a"]


async def test_idempotency_key_returns_the_earlier_submit_until_it_expires(store: Store) -> None:
    key = IdempotencyKey("k1", "hash-1", 60)
    assert await store.create_execution(new("e1"), idempotency=key) is None
    again = IdempotencyKey("k1", "hash-2", 60)
    assert await store.create_execution(new("e2"), idempotency=again) == ("e1", "hash-1")
    assert await store.create_execution(new("e3", org="other"), idempotency=again) is None
    assert await store.get_execution("e2") is None
    # An expired key no longer holds (a TTL of 0 has expired by the next submit, whatever
    # the machine's load: a short sleep against a short TTL flaked under CI load).
    expired = IdempotencyKey("k2", "hash-3", 0)
    assert await store.create_execution(new("e4"), idempotency=expired) is None
    fresh = IdempotencyKey("k2", "hash-4", 60)
    assert await store.create_execution(new("e5"), idempotency=fresh) is None
    assert await store.create_execution(new("e6"), idempotency=fresh) == ("e5", "hash-4")


async def test_renew_leases_gives_back_what_is_not_running(store: Store) -> None:
    """Bug 5 (store side): an owned execution that is no longer running is released at once."""
    for eid in ("e1", "e2"):
        await add(store, eid)
    await store.claim("w:1", 2, 0.2)
    await store.renew_leases("w:1", ["e1"], 15)
    assert [c.execution_id for c in await store.claim("w:2", 5, 15)] == ["e2"]
    await asyncio.sleep(0.3)
    assert await store.claim("w:2", 5, 15) == []  # e1's renewed lease still holds


async def test_release_gives_back_every_unfinished_execution(store: Store) -> None:
    for eid in ("e1", "e2"):
        await add(store, eid)
    await store.claim("w:1", 2, 60)
    await store.finish("e1", RunEnd(status=ExecutionStatus.FAILED, error="x", node_results=None))
    assert not await store.has_queued()
    await store.release("w:1")
    assert await store.has_queued()
    (claim,) = await store.claim("w:2", 5, 15)
    assert (claim.execution_id, claim.attempts) == ("e2", 2)


async def test_mark_done_and_cancelled_among(store: Store) -> None:
    for eid in ("e1", "e2"):
        await add(store, eid)
    await store.claim("w", 2, 15)
    await store.cancel("e1")
    assert await store.cancelled_among(["e1", "e2", "nope"]) == {"e1"}
    assert await store.cancelled_among([]) == set()
    await store.mark_done("e1")
    row = await store.get_execution("e1")
    assert row is not None and (row["status"], row["state"]) == ("cancelled", "done")


async def test_start_finish_and_counts(store: Store) -> None:
    await add(store, "e1")
    (claim,) = await store.claim("w", 1, 15)
    assert (claim.status, claim.definition, claim.attempts) == ("pending", '{"nodes": []}', 1)
    assert await store.start("e1", RunStart(3, "inline", "why", "f"))
    assert await store.checkpoint(
        "e1",
        Checkpoint(
            checkpoint_rows(("a", "completed"), ("b", "error")),
            current_node_id=None,
            node_results='{"a": 1}',
            counts={"completedNodes": 1, "failedNodes": 1, "skippedNodes": 0},
        ),
    )
    assert await store.log_counts("e1") == {"completed": 1, "error": 1}
    assert await store.finish(
        "e1", RunEnd(status=ExecutionStatus.FAILED, error="b failed", node_results=None)
    )
    row = await store.get_execution("e1")
    assert row is not None
    assert (row["status"], row["error"], row["nodeResults"], row["finalOutput"]) == (
        "failed",
        "b failed",
        '{"a": 1}',
        None,
    )
    assert (row["totalNodes"], row["mode"], row["modeReason"], row["flowRunId"]) == (
        3,
        "inline",
        "why",
        "f",
    )
    assert (row["completedNodes"], row["failedNodes"], row["state"]) == (1, 1, "done")
    assert row["startedAt"] is not None and row["completedAt"] is not None
    assert not await store.has_queued()


PROPS = [{"id": "p_name", "entityId": "ent_1", "name": "Name", "type": "text"}]


async def seed_entity(store: Store) -> None:
    await seed_rows(store, "organizations", [{"id": "org", "name": "Org"}])
    await seed_rows(
        store, "entities", [{"id": "ent_1", "organizationId": "org", "name": "Machines"}]
    )
    await seed_rows(store, "properties", PROPS)
    await seed_rows(
        store,
        "records",
        [
            {"id": "r_b", "entityId": "ent_1", "createdAt": "2025-06-15T10:00:00.000Z"},
            {"id": "r_A", "entityId": "ent_1", "createdAt": "2025-06-14T09:00:00.000Z"},
            {"id": "r_a", "entityId": "ent_1", "createdAt": "2025-06-14T09:00:00.000Z"},
            {"id": "r_0", "entityId": "ent_1", "createdAt": None},
        ],
    )
    await seed_rows(
        store,
        "record_values",
        [{"id": "v1", "recordId": "r_b", "propertyId": "p_name", "value": "Boiler"}],
    )


async def test_entity_records_in_byte_order_and_saved_in_order(store: Store) -> None:
    await seed_entity(store)
    name, rows = await store.entities.fetch_entity_records("ent_1", "org")
    assert name == "Machines"
    assert [r["id"] for r in rows] == ["r_0", "r_A", "r_a", "r_b"]
    assert rows[-1] == {"id": "r_b", "createdAt": "2025-06-15T10:00:00.000Z", "Name": "Boiler"}
    saved = await store.entities.save_entity_records(
        "ent_1",
        "org",
        [NewRecord("2030-01-01T00:00:00.000Z", {"name": "x", "Temp": "3"})] * 2,
        {"name": "text", "Temp": "number"},
    )
    assert (saved.entity_name, saved.created_properties) == ("Machines", [("Temp", "number")])
    _, rows = await store.entities.fetch_entity_records("ent_1", "org")
    assert [r["id"] for r in rows[-2:]] == saved.saved_ids
    assert rows[-1] == {
        "id": saved.saved_ids[1],
        "createdAt": "2030-01-01T00:00:00.000Z",
        "Name": "x",
        "Temp": "3",
    }
    with pytest.raises(EntityNotFound):
        await store.entities.fetch_entity_records("nope", "org")
    with pytest.raises(EntityNotFound):
        await store.entities.save_entity_records("nope", "org", [], {})


async def test_generic_tables_insert_upsert_and_refusals(store: Store) -> None:
    def save(rows: list[tuple[str, str]], *, upsert: bool) -> Any:
        return store.entities.save_generic_records(
            GenericSave("devices", rows, upsert=upsert, workflow_id="w", execution_id="e", now="t")
        )

    assert await save([("a", "{}"), ("b", "{}")], upsert=False) == 0
    with pytest.raises(EntityStoreError, match="already exists"):
        await save([("c", "{}"), ("a", "{}")], upsert=False)
    assert await save([("a", '{"v": 1}'), ("c", "{}"), ("a", '{"v": 2}')], upsert=True) == 1
    with pytest.raises(EntityStoreError, match="already exists"):
        await save([("c", "{}")], upsert=False)  # c was written by the upsert, not the failure
    for name in ("wos_executions", "workflows", "users", "bad name"):
        with pytest.raises(EntityStoreError, match="Invalid table name"):
            await store.entities.save_generic_records(
                GenericSave(
                    name, [("a", "{}")], False, workflow_id=None, execution_id=None, now="t"
                )
            )


async def test_service_runs_a_workflow_on_every_store(service: Service) -> None:
    workflow = {
        "nodes": [{"id": "t", "type": "trigger"}, {"id": "m", "type": "manualInput"}],
        "connections": [{"id": "c", "fromNodeId": "t", "toNodeId": "m"}],
    }
    await service.add_workflow("wf1", workflow)
    response = await service.execute(workflowId="wf1", inputs={})
    assert response.status_code == 200, response.text
    final = await service.wait(response.json()["executionId"])
    assert final["status"] == "completed", final


async def test_a_duplicate_execution_id_is_refused_alike(store: Store) -> None:
    await add(store, "e1")
    with pytest.raises(DuplicateExecution):
        await add(store, "e1")
    with pytest.raises(DuplicateExecution):
        await store.create_execution(new("e1"), idempotency=IdempotencyKey("k", "h", 60))
    assert await store.create_execution(new("e2"), idempotency=IdempotencyKey("k", "h", 60)) is None
    row = await store.get_execution("e1")
    assert row is not None and row["status"] == "pending"


async def test_a_running_row_without_a_lease_is_not_claimable(store: Store) -> None:
    """SQL's `NULL < now` is never true: a running row whose lease is NULL stays where it is."""
    run = {"seq": 1, "definition": "{}", "requestedMode": "inline", "createdAt": "t"}
    await seed_rows(store, "workflow_executions", [{"id": "e1", "workflowId": "w"}])
    await seed_rows(
        store,
        "wos_executions",
        [{**run, "executionId": "e1", "state": "running", "leaseOwner": "w:1", "attempts": 1}],
    )
    assert not await store.has_queued()
    assert await store.claim("w:2", 5, 15) == []


async def test_log_counts_skip_rows_without_a_node_id(store: Store) -> None:
    """count(distinct nodeId) ignores NULLs: a Node-written row without a node is not counted."""
    await add(store, "e1")
    rows = [
        {"id": "l1", "executionId": "e1", "nodeId": "a", "status": "completed"},
        {"id": "l2", "executionId": "e1", "nodeId": None, "status": "completed"},
        {"id": "l3", "executionId": "e1", "nodeId": None, "status": "error"},
    ]
    await seed_rows(store, "execution_logs", rows)
    assert await store.log_counts("e1") == {"completed": 1, "error": 0}
