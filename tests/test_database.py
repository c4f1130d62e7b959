"""The store's contract, run against SQLite and the local PostgreSQL server."""

import asyncio
import json
import sqlite3
from pathlib import Path

from database import LogRow, NewExecution, Store, open_store
from tests.support import node_backend_sqlite


async def add(store: Store, eid: str, **kw: object) -> None:
    await store.create_execution(
        NewExecution(
            execution_id=eid,
            workflow_id=str(kw.get("workflow_id", "wf1")),
            workflow_name="WF",
            organization_id="org",
            inputs={"x": 1},
            definition='{"nodes": []}',
            mode="inline",
        )
    )


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
    assert await store.start("e1", total_nodes=2, mode="inline", mode_reason=None)
    rows = [LogRow("a", "trigger", "A", "running")]
    assert await store.checkpoint(
        "e1",
        rows,
        current_node_id="a",
        node_results="{}",
        counts={"completedNodes": 0, "failedNodes": 0, "skippedNodes": 0},
    )
    assert await store.cancel("e1") == ("running", True)
    late = [
        LogRow("a", "trigger", "A", "completed", output_json="{}", duration_ms=3),
        LogRow("b", "output", "B", "running"),
    ]
    assert not await store.checkpoint(
        "e1",
        late,
        current_node_id="b",
        node_results='{"a": {}}',
        counts={"completedNodes": 1, "failedNodes": 0, "skippedNodes": 0},
    )
    assert not await store.finish("e1", status="completed", error=None, node_results="{}")
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
    await store.start("e1", total_nodes=12, mode="inline", mode_reason=None)
    for i in range(12):
        await store.checkpoint(
            "e1",
            [LogRow(f"n{i}", "t", "L", "running")],
            current_node_id=f"n{i}",
            node_results=None,
            counts={},
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


async def test_node_backend_schema_is_used_as_is(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    url = node_backend_sqlite(path)
    before = (
        sqlite3.connect(path)
        .execute("SELECT sql FROM sqlite_master WHERE name='workflow_executions'")
        .fetchone()
    )
    store = await open_store(url)
    await add(store, "e1")
    await store.close()
    conn = sqlite3.connect(path)
    after = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name='workflow_executions'"
    ).fetchone()
    assert before == after
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT status FROM workflow_executions").fetchall() == [("pending",)]
    # the service's index on the log rows is added to the Node backend's existing table
    indexes = {r[1] for r in conn.execute("PRAGMA index_list('execution_logs')")}
    assert "idx_wos_logs_execution" in indexes


async def test_group_commit_waits_off_the_loop_while_another_process_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    store = await open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. the Node backend in the middle of a write
    pending = asyncio.create_task(add(store, "e1"))
    await asyncio.sleep(0.2)  # the event loop keeps running while the write waits for the lock
    assert not pending.done()
    other.execute("COMMIT")
    await asyncio.wait_for(pending, 5)
    row = await store.get_execution("e1")
    assert row is not None and row["status"] == "pending"
    other.close()
    await store.close()
