"""Execution events in the store (`EventStore`, `database.events`): written in the same
transaction as what they report, on SQLite, PostgreSQL and in memory."""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from api.executions import progress_of
from database import Checkpoint, LogRow, NewExecution, RunEnd, RunStart, Store, open_store
from database.events import (
    EVENT_TYPES,
    NOTIFY_CHANNEL,
    PREVIEW_MAX_BYTES,
    Counts,
    event_row,
    node_drafts,
    output_summary,
    preview,
    preview_json,
    progress,
    to_event,
)
from database.interfaces import Event, IdempotencyKey
from flows.runner import PrefectProbe, Runner
from states import ExecutionStatus, NodeStatus
from tests.conftest import MakeResources, Service
from tests.e2e import MockServer
from tests.support import postgres_database

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BRANCH = {
    "nodes": [
        {"id": "t", "type": "trigger", "label": "Start"},
        {
            "id": "m",
            "type": "manualInput",
            "config": {"manualInputVarName": "temperature", "manualInputVarValue": "85"},
        },
        {
            "id": "c",
            "type": "condition",
            "label": "Too hot?",
            "config": {
                "conditionField": "temperature",
                "conditionOperator": "greaterThan",
                "conditionValue": "80",
            },
        },
        {"id": "hot", "type": "addField", "config": {"addFieldName": "s", "addFieldValue": "A"}},
        {"id": "ok", "type": "addField", "config": {"addFieldName": "s", "addFieldValue": "B"}},
        {"id": "o", "type": "output", "label": "Result"},
    ],
    "connections": [
        {"fromNodeId": "t", "toNodeId": "m"},
        {"fromNodeId": "m", "toNodeId": "c"},
        {"fromNodeId": "c", "toNodeId": "hot", "outputType": "true"},
        {"fromNodeId": "c", "toNodeId": "ok", "outputType": "false"},
        {"fromNodeId": "hot", "toNodeId": "o"},
    ],
}


def new(eid: str, definition: str = '{"nodes": []}', org: str | None = "org") -> NewExecution:
    return NewExecution(
        execution_id=eid,
        workflow_id="wf1",
        workflow_name="WF",
        organization_id=org,
        inputs={},
        definition=definition,
        mode="inline",
    )


def data(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(event.data)
    assert body["id"] == event.id and body["type"] == event.type
    assert body["executionId"] == event.execution_id
    assert TIMESTAMP.match(body["timestamp"])
    return body


def kinds(events: list[Event]) -> list[tuple[str, str | None]]:
    return [(e.type, data(e).get("nodeId")) for e in events]


async def test_a_whole_run_publishes_its_events_in_order(service: Service) -> None:
    r = await service.execute(workflow=BRANCH, inputs={}, organizationId="org_a")
    eid = r.json()["executionId"]
    final = await service.wait(eid)
    events = await service.store.events_after(0, execution_id=eid)
    assert kinds(events) == [
        ("execution.queued", None),
        ("execution.started", None),
        ("node.started", "t"),
        ("node.completed", "t"),
        ("node.started", "m"),
        ("node.completed", "m"),
        ("node.started", "c"),
        ("node.completed", "c"),
        ("node.skipped", "ok"),
        ("node.started", "hot"),
        ("node.completed", "hot"),
        ("node.started", "o"),
        ("node.completed", "o"),
        ("execution.completed", None),
    ]
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))
    assert {(e.workflow_id, e.organization_id) for e in events} == {(final["workflowId"], "org_a")}
    bodies = [data(e) for e in events]
    assert bodies[0]["progress"] == {
        "totalNodes": 0,
        "completedNodes": 0,
        "failedNodes": 0,
        "skippedNodes": 0,
        "percentage": 0,
    }
    assert bodies[1]["progress"]["totalNodes"] == 6
    assert bodies[2] | {"id": 0, "timestamp": ""} == {
        "id": 0,
        "type": "node.started",
        "executionId": eid,
        "workflowId": final["workflowId"],
        "timestamp": "",
        "progress": {
            "totalNodes": 6,
            "completedNodes": 0,
            "failedNodes": 0,
            "skippedNodes": 0,
            "percentage": 0,
        },
        "nodeId": "t",
        "nodeType": "trigger",
        "nodeLabel": "Start",
    }
    done_c = bodies[7]
    assert (done_c["nodeLabel"], done_c["attempts"], done_c["progress"]["completedNodes"]) == (
        "Too hot?",
        1,
        3,
    )
    assert done_c["durationMs"] >= 0 and done_c["output"] == {"temperature": 85}
    skipped = bodies[8]
    assert (skipped["durationMs"], skipped["attempts"], skipped["progress"]["skippedNodes"]) == (
        0,
        0,
        1,
    )
    assert bodies[-1]["progress"] == final["progress"]
    assert bodies[-1]["output"] == {"o": final["nodeResults"]["o"]["outputData"]}


async def test_a_failed_node_reports_its_error_and_attempts(service: Service) -> None:
    server = MockServer({("GET", "/down"): lambda _: (500, {"error": "down"})})
    try:
        url = f"http://127.0.0.1:{server.port}/down"
        workflow = {
            "nodes": [
                {"id": "t", "type": "trigger"},
                {"id": "h", "type": "http", "config": {"httpUrl": url, "retries": 1}},
            ],
            "connections": [{"fromNodeId": "t", "toNodeId": "h"}],
        }
        # the retry delay is the node type's default (0.5 s, jittered)
        eid = (await service.execute(workflow=workflow, inputs={})).json()["executionId"]
        final = await service.wait(eid, timeout=20)
    finally:
        server.close()
    events = await service.store.events_after(0, execution_id=eid)
    assert [e.type for e in events][-3:] == ["node.started", "node.failed", "execution.failed"]
    failed, end = data(events[-2]), data(events[-1])
    assert (failed["nodeId"], failed["attempts"]) == ("h", 2)
    assert "500" in failed["error"] and "output" not in failed
    assert failed["progress"]["failedNodes"] == 1
    assert end["error"] == final["error"] and end["progress"] == final["progress"]


async def test_a_node_completed_event_is_never_visible_before_its_result(
    service: Service,
) -> None:
    """A reader polling the events finds each settled node's log row and result already there."""
    wid_nodes = [{"id": "t", "type": "trigger"}] + [
        {"id": f"a{i}", "type": "addField", "config": {"addFieldName": f"f{i}", "addFieldValue": i}}
        for i in range(8)
    ]
    ids = [n["id"] for n in wid_nodes]
    workflow = {
        "nodes": wid_nodes,
        "connections": [
            {"fromNodeId": a, "toNodeId": b} for a, b in zip(ids, ids[1:], strict=False)
        ],
    }
    last = await service.store.last_event_id()
    eid = (await service.execute(workflow=workflow, inputs={})).json()["executionId"]
    checked: list[str] = []
    for _ in range(1000):
        batch = await service.store.events_after(last, execution_id=eid)
        for event in batch:
            last = event.id
            if event.type == "node.completed":
                node = data(event)["nodeId"]
                row = await service.store.get_execution(eid)
                assert row is not None and node in json.loads(row["nodeResults"])
                logs = await service.store.get_logs(eid)
                assert any(r["nodeId"] == node and r["status"] == "completed" for r in logs)
                checked.append(node)
            if event.type == "execution.completed":
                row = await service.store.get_execution(eid)
                assert row is not None and row["status"] == "completed"
                assert checked == ids
                return
        await asyncio.sleep(0.002)
    raise AssertionError(f"no execution.completed event; saw {checked}")


async def test_cancel_is_the_last_event_of_its_execution(store: Store) -> None:
    await store.create_execution(new("e1"))
    await store.claim("w:1", 1, 15)
    assert await store.start("e1", RunStart(2, "inline", None))
    running = LogRow("a", "http", "A", NodeStatus.RUNNING)
    assert await store.checkpoint("e1", Checkpoint([running], "a", None, {}))
    assert (await store.cancel("e1")) == ("running", True)
    settled = LogRow("a", "http", "A", NodeStatus.ERROR, error="cancelled", duration_ms=3)
    counts = {"completedNodes": 0, "failedNodes": 1, "skippedNodes": 0}
    assert not await store.checkpoint("e1", Checkpoint([settled], None, "{}", counts))
    end = RunEnd(ExecutionStatus.COMPLETED, None, "{}")
    assert not await store.finish("e1", end)
    assert (await store.cancel("e1")) == ("cancelled", False)
    events = await store.events_after(0, execution_id="e1")
    assert [e.type for e in events] == [
        "execution.queued",
        "execution.started",
        "node.started",
        "execution.cancelled",
    ]
    cancelled = data(events[-1])
    assert cancelled["error"] == "Execution cancelled by user"
    assert cancelled["progress"] == {
        "totalNodes": 2,
        "completedNodes": 0,
        "failedNodes": 0,
        "skippedNodes": 0,
        "percentage": 0,
    }


async def test_cancelling_a_pending_execution(store: Store) -> None:
    await store.create_execution(new("e1", org=None))
    assert (await store.cancel("e1")) == ("pending", True)
    (claimless,) = [e for e in await store.events_after(0) if e.type == "execution.cancelled"]
    assert claimless.organization_id is None
    assert data(claimless)["progress"]["percentage"] == 100  # settled without nodes
    assert await store.claim("w:1", 1, 15) == []
    assert [e.type for e in await store.events_after(0)] == [
        "execution.queued",
        "execution.cancelled",
    ]


async def test_a_resumed_run_publishes_execution_resumed(
    store: Store, make_resources: MakeResources
) -> None:
    definition = json.dumps({"nodes": [{"id": "t", "type": "trigger"}]})
    await store.create_execution(new("e1", definition))
    await store.claim("dead:1", 1, 0.01)
    assert await store.start("e1", RunStart(1, "inline", None))
    await asyncio.sleep(0.05)
    (claim,) = await store.claim("w:2", 1, 15)
    assert claim.attempts == 2
    resources = make_resources()
    runner = Runner(resources.settings, store, resources, PrefectProbe(None))
    assert await runner.run(claim, asyncio.Event()) == "completed"
    events = await store.events_after(0, execution_id="e1")
    assert [e.type for e in events] == [
        "execution.queued",
        "execution.started",
        "execution.resumed",
        "node.started",
        "node.completed",
        "execution.completed",
    ]
    assert data(events[2])["progress"]["totalNodes"] == 1


async def test_events_after_pages_and_filters(store: Store) -> None:
    assert await store.last_event_id() == 0
    assert await store.events_after(0) == []
    for eid in ("e1", "e2", "e3"):
        await store.create_execution(new(eid))
    await store.claim("w:1", 3, 15)
    for eid in ("e1", "e2", "e3"):
        await store.start(eid, RunStart(0, "inline", None))
    everything = await store.events_after(0)
    assert len(everything) == 6
    assert await store.last_event_id() == everything[-1].id
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    pages, after = [], 0
    while page := await store.events_after(after, limit=4):
        pages.append(page)
        after = page[-1].id
    assert [len(p) for p in pages] == [4, 2]
    assert [e for p in pages for e in p] == everything
    e2 = await store.events_after(0, execution_id="e2")
    assert [(e.execution_id, e.type) for e in e2] == [
        ("e2", "execution.queued"),
        ("e2", "execution.started"),
    ]
    assert await store.events_after(e2[0].id, execution_id="e2") == e2[1:]
    assert await store.events_after(everything[-1].id) == []
    assert await store.events_after(0, limit=0) == []
    assert await store.events_after(0, execution_id="nope") == []


async def test_group_committed_submits_publish_in_submission_order(store: Store) -> None:
    ids = [f"e{i:02d}" for i in range(40)]
    await asyncio.gather(*(store.create_execution(new(eid)) for eid in ids))
    events = await store.events_after(0, limit=100)
    assert [(e.execution_id, e.type) for e in events] == [(i, "execution.queued") for i in ids]


async def test_an_idempotent_submit_publishes_one_queued_event(store: Store) -> None:
    key = IdempotencyKey("k1", "hash", 60)
    assert await store.create_execution(new("e1"), idempotency=key) is None
    assert await store.create_execution(new("e2"), idempotency=key) == ("e1", "hash")
    assert [(e.execution_id, e.type) for e in await store.events_after(0)] == [
        ("e1", "execution.queued")
    ]


async def test_concurrent_writers_make_ids_visible_in_id_order(store: Store) -> None:
    """A reader that saw id N never finds a smaller id later: every event is seen in the order
    of the ids, even with transactions committing concurrently (the PostgreSQL advisory lock)."""
    stop = asyncio.Event()
    seen: list[int] = []

    async def read() -> None:
        last = 0
        while not stop.is_set() or await store.events_after(last):
            for event in await store.events_after(last):
                seen.append(event.id)
                last = event.id
            await asyncio.sleep(0)

    async def write(n: int) -> None:
        for i in range(15):
            eid = f"w{n}-{i}"
            key = IdempotencyKey(eid, "h", 60)  # its own transaction (no group commit)
            await store.create_execution(new(eid), idempotency=key)
            if i % 3 == 0:
                await store.cancel(eid)

    reader = asyncio.create_task(read())
    await asyncio.gather(*(write(n) for n in range(4)))
    stop.set()
    await reader
    assert seen == [e.id for e in await store.events_after(0, limit=1000)]
    assert len(seen) == 4 * (15 + 5)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async for url in postgres_database():
        yield url


@pytest.mark.postgres
async def test_postgres_notifies_the_highest_id_at_commit(pg_url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    store = await open_store(pg_url)
    listener = await asyncpg.connect(pg_url)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(NOTIFY_CHANNEL, lambda *args: received.put_nowait(args[3]))
    try:
        await store.create_execution(new("e1"))
        await store.claim("w:1", 1, 15)
        await store.start("e1", RunStart(1, "inline", None))
        rows = [LogRow(n, "x", n, NodeStatus.RUNNING) for n in ("a", "b")]
        await store.checkpoint("e1", Checkpoint(rows, "b", None, {}))
        payloads = [await asyncio.wait_for(received.get(), 5) for _ in range(3)]
        ids = [e.id for e in await store.events_after(0)]
        assert [int(p) for p in payloads] == [ids[0], ids[1], ids[3]]
    finally:
        await listener.close()
        await store.close()


@pytest.mark.parametrize(
    ("total", "done", "failed", "skipped", "settled"),
    [
        (0, 0, 0, 0, False),
        (0, 0, 0, 0, True),
        (3, 1, 0, 0, False),
        (3, 1, 1, 1, True),
        (7, 2, 0, 1, False),
        (2, 5, 0, 0, False),
    ],
)
def test_progress_is_the_status_endpoints(
    total: int, done: int, failed: int, skipped: int, settled: bool
) -> None:
    ours = progress(Counts(total, done, failed, skipped), settled=settled)
    theirs = progress_of(
        settled=settled, total=total, completed=done, failed=failed, skipped=skipped
    )
    assert ours == theirs.model_dump()


def _big_values() -> Iterator[Any]:
    yield [{"row": i, "text": "x" * 50} for i in range(500)]
    yield {f"k{i}": "é" * 100 for i in range(100)}
    yield "\u0001" * 10_000  # escapes to six bytes each
    yield {"one": "x" * 5000}
    yield [["y" * 3000]]


@pytest.mark.parametrize("value", list(_big_values()))
def test_previews_stay_under_the_cap(value: Any) -> None:
    shown = preview(value)
    assert len(json.dumps(shown, ensure_ascii=False).encode()) <= PREVIEW_MAX_BYTES
    assert shown["truncated"] is True and shown["originalBytes"] > PREVIEW_MAX_BYTES
    if isinstance(value, list) and len(value) > 1:
        assert shown["items"] == len(value) and shown["preview"] == value[: len(shown["preview"])]
        assert shown["preview"]
    assert preview({"small": [1, 2]}) == {"small": [1, 2]}


def test_the_final_output_summary_prefers_output_nodes() -> None:
    results = {
        "t": {"success": True, "outputData": {}},
        "o": {"success": True, "outputData": [1, 2], "isFinal": True},
    }
    assert output_summary(json.dumps(results)) == {"o": [1, 2]}
    del results["o"]["isFinal"]
    assert output_summary(json.dumps(results)) == {"t": {}, "o": [1, 2]}
    assert output_summary(None) is None


def test_every_event_type_is_named_once() -> None:
    assert len(set(EVENT_TYPES)) == len(EVENT_TYPES) == 10


@pytest.mark.parametrize("value", [*_big_values(), {"a": [1, 2]}, "x\ny", None])
def test_encoded_previews_are_the_previews(value: Any) -> None:
    assert json.loads(preview_json(value)) == json.loads(json.dumps(preview(value)))


def test_event_json_is_one_line_whatever_the_names() -> None:
    row = LogRow('n"1\n', "x\u2028", "la\\bel\r", NodeStatus.ERROR, error="a\nb", duration_ms=2)
    (draft,) = node_drafts([row])
    stored = event_row(
        draft,
        execution_id="e\n",
        workflow_id=None,
        organization_id="o",
        counts=Counts(1, 0, 1, 0),
        now="2026-12-07T00:00:00.000Z",
    )
    event = to_event(3, stored)
    assert "\n" not in event.data and "\r" not in event.data
    body = json.loads(event.data)
    assert (body["nodeId"], body["nodeType"], body["nodeLabel"]) == (
        'n"1\n',
        "x\u2028",
        "la\\bel\r",
    )
    assert (body["error"], body["executionId"], body["workflowId"]) == ("a\nb", "e\n", None)
    assert body["progress"]["percentage"] == 100 and body["attempts"] == 1
