"""Lease fencing on every store (SQLite, PostgreSQL, memory): a worker whose lease another worker
took over (it was paused, partitioned or slow) cannot write a start, a checkpoint, a finish or a
mark_done for that execution any more, and no event is published for a refused write; the runner
stops such a run at once (interrupted) without writing anything more."""

import asyncio
import dataclasses
import json
from typing import Any

import httpx

from database import Checkpoint, LogRow, NewExecution, RunEnd, RunStart, Store
from flows.runner import PrefectProbe, Runner
from states import ExecutionStatus, NodeStatus, Outcome
from tests.conftest import MakeResources

OLD, NEW = "host:1:old", "host:2:new"


def new(eid: str, definition: str = '{"nodes": []}') -> NewExecution:
    return NewExecution(
        execution_id=eid,
        workflow_id="wf1",
        workflow_name="WF",
        organization_id="org",
        inputs={},
        definition=definition,
        mode="inline",
    )


async def take_over(store: Store, eid: str) -> None:
    """OLD claims `eid` with a lease that expires at once; NEW claims it after."""
    await store.claim(OLD, 1, 0.01)
    await asyncio.sleep(0.05)
    (claim,) = await store.claim(NEW, 1, 15)
    assert claim.execution_id == eid and claim.attempts == 2


def settled(nid: str) -> Checkpoint:
    row = LogRow(nid, "trigger", "T", NodeStatus.COMPLETED, output_json="{}")
    return Checkpoint([row], nid, json.dumps({nid: {"success": True}}), {})


async def state(store: Store, eid: str) -> tuple[Any, ...]:
    row = await store.get_execution(eid)
    assert row is not None
    logs = [(r["nodeId"], r["status"]) for r in await store.get_logs(eid)]
    return row["status"], row["state"], row["nodeResults"], row["completedAt"], logs


async def test_owner_writes_apply_while_it_holds_the_lease(store: Store) -> None:
    await store.create_execution(new("e1"))
    await store.claim(OLD, 1, 15)
    assert await store.start("e1", RunStart(1, "inline", None), OLD)
    assert await store.checkpoint("e1", settled("a"), OLD)
    assert await store.finish("e1", RunEnd(ExecutionStatus.COMPLETED, None, "{}"), OLD)
    status, run_state, _, completed, logs = await state(store, "e1")
    assert (status, run_state, logs) == ("completed", "done", [("a", "completed")])
    assert completed is not None


async def test_taken_over_run_refuses_the_old_owners_start(store: Store) -> None:
    await store.create_execution(new("e1"))
    await take_over(store, "e1")
    before = await state(store, "e1")
    last = await store.last_event_id()
    assert not await store.start("e1", RunStart(3, "inline", None), OLD)
    assert await state(store, "e1") == before == ("pending", "running", None, None, [])
    assert await store.events_after(last) == []
    assert await store.start("e1", RunStart(3, "inline", None, resumed=True), NEW)
    assert (await state(store, "e1"))[0] == "running"


async def test_taken_over_run_refuses_the_old_owners_checkpoint(store: Store) -> None:
    await store.create_execution(new("e1"))
    await take_over(store, "e1")
    assert await store.start("e1", RunStart(2, "inline", None, resumed=True), NEW)
    assert await store.checkpoint("e1", settled("a"), NEW)
    before = await state(store, "e1")
    last = await store.last_event_id()
    # the old owner's settled node, and one it starts: neither row nor result nor count lands
    started = LogRow("b", "trigger", "B", NodeStatus.RUNNING)
    stale = Checkpoint([*settled("b").rows, started], "b", '{"b": {}}', {"completedNodes": 9})
    assert not await store.checkpoint("e1", stale, OLD)
    assert await state(store, "e1") == before
    assert before[4] == [("a", "completed")]
    assert await store.events_after(last) == []
    row = await store.get_execution("e1")
    assert row is not None and row["completedNodes"] == 0


async def test_taken_over_run_refuses_the_old_owners_finish(store: Store) -> None:
    await store.create_execution(new("e1"))
    await take_over(store, "e1")
    assert await store.start("e1", RunStart(1, "inline", None, resumed=True), NEW)
    before = await state(store, "e1")
    last = await store.last_event_id()
    failed = RunEnd(ExecutionStatus.FAILED, "stale", "{}")
    assert not await store.finish("e1", failed, OLD)
    assert await state(store, "e1") == before
    assert before[:2] == ("running", "running")
    assert await store.events_after(last) == []
    assert await store.finish("e1", RunEnd(ExecutionStatus.COMPLETED, None, "{}"), NEW)
    assert (await state(store, "e1"))[:2] == ("completed", "done")


async def test_taken_over_run_refuses_the_old_owners_mark_done(store: Store) -> None:
    await store.create_execution(new("e1"))
    await take_over(store, "e1")
    assert not await store.mark_done("e1", OLD)
    assert (await state(store, "e1"))[1] == "running"
    await store.renew_leases(NEW, ["e1"], 15)  # still NEW's, renewable
    assert await store.mark_done("e1", NEW)
    assert (await state(store, "e1"))[1] == "done"
    assert not await store.mark_done("unknown", NEW)


async def test_old_owner_cannot_renew_a_lease_taken_over(store: Store) -> None:
    await store.create_execution(new("e1"))
    await take_over(store, "e1")
    await store.renew_leases(OLD, ["e1"], 15)
    assert await store.claim("host:3:other", 1, 15) == []  # NEW's lease is intact
    assert not await store.checkpoint("e1", settled("a"), OLD)


async def test_runner_stops_a_run_whose_lease_was_taken_over(
    store: Store, make_resources: MakeResources
) -> None:
    """The old owner's http node answers only after another worker took the run over: its
    settled row is refused, the run ends interrupted, and nothing of it is written after."""
    definition = json.dumps(
        {
            "nodes": [
                {"id": "t", "type": "trigger"},
                {"id": "h", "type": "http", "config": {"url": "http://api.test/x"}},
            ],
            "connections": [{"fromNodeId": "t", "toNodeId": "h"}],
        }
    )
    await store.create_execution(new("e1", definition))
    (claim,) = await store.claim(OLD, 1, 0.01)

    async def answer_after_takeover(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        (again,) = await store.claim(NEW, 1, 15)
        assert again.execution_id == "e1"
        return httpx.Response(200, json={"ok": True})

    resources = make_resources(answer_after_takeover)
    runner = Runner(resources.settings, store, resources, PrefectProbe(None))
    last_before_node: list[int] = []

    async def run() -> Outcome:
        return await runner.run(dataclasses.replace(claim, owner=OLD), asyncio.Event())

    task = asyncio.create_task(run())
    for _ in range(200):  # until the http node started (its `running` row is committed)
        await asyncio.sleep(0.01)
        if ("h", "running") in (await state(store, "e1"))[4]:
            last_before_node.append(await store.last_event_id())
            break
    assert await task == Outcome.INTERRUPTED
    status, run_state, _, completed, logs = await state(store, "e1")
    assert (status, run_state, completed) == ("running", "running", None)
    assert logs == [("t", "running"), ("t", "completed"), ("h", "running")]  # none settles h
    assert last_before_node and await store.events_after(last_before_node[0]) == []
    row = await store.get_execution("e1")
    assert row is not None and "h" not in json.loads(row["nodeResults"] or "{}")
