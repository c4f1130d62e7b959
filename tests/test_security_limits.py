"""Issue 9, limits: submit limits (422 naming the limit, the maximum itself accepted), linear
algorithms on user data, and no poison executions. Table-driven; the API cases run against the
in-process service on a real store."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from database import Store
from database.ids import new_execution_id
from database.interfaces import Checkpoint, LogRow, NewExecution, RunStart
from database.sql import SqlStore
from flows.engine import Job, execute
from flows.graph import build_plan, parse_workflow
from flows.runner import PrefectProbe, Runner
from flows.worker import Worker
from states import ExecutionMode, NodeStatus
from tasks.logic import merge_by_key
from tasks.registry import rules_of
from tasks.values import parse_number_string, render_fields, render_template, to_number
from tests.conftest import Service, make_settings
from tests.test_engine import MemoryRecorder

FAST_S = 5.0
"""Generous bound for what must take well under a second (linear work on ~1 MB)."""
on_sqlite = pytest.mark.parametrize("service", ["sqlite"], indirect=True)


def node(nid: str, type_: str = "trigger", **config: Any) -> dict[str, Any]:
    return {"id": nid, "type": type_, "config": config}


def edge(src: str, dst: str, n: int = 0) -> dict[str, Any]:
    return {"id": f"{src}->{dst}#{n}", "fromNodeId": src, "toNodeId": dst}


def workflow(nodes: int = 2, connections: int = 1, **config: Any) -> dict[str, Any]:
    """A trigger feeding addField nodes (`config` on each), with `connections` edges in all
    (parallel trigger->n1 edges make up the count)."""
    ns = [node("t"), *(node(f"n{i}", "addField", **config) for i in range(1, nodes))]
    es = [edge("t", f"n{1 + i % (nodes - 1)}", i) for i in range(connections)]
    return {"nodes": ns, "connections": es}


SUBMIT_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("nodes at the limit", workflow(nodes=1000), None),
    ("nodes over the limit", workflow(nodes=1001), "MAX_WORKFLOW_NODES"),
    ("connections at the limit", workflow(connections=5000), None),
    ("connections over the limit", workflow(connections=5001), "MAX_WORKFLOW_CONNECTIONS"),
    ("retries at the limit", workflow(retries=2), None),
    ("retries over the limit", workflow(retries=3), "retries must be at most 2"),
    ("retries as text over the limit", workflow(retries="99"), "retries must be at most 2"),
    ("retries of 5,000 digits", workflow(retries="9" * 5000), "must be numbers"),
    ("retryDelayMs at the limit", workflow(retryDelayMs=60_000), None),
    ("retryDelayMs over the limit", workflow(retryDelayMs=60_001), "retryDelayMs must be at most"),
    ("retryDelayMs infinite", workflow(retryDelayMs="1e999"), "retryDelayMs must be at most"),
    ("retryDelayMs NaN", workflow(retryDelayMs="NaN"), "must be numbers"),
    ("timeoutMs at the limit", workflow(timeoutMs=3_600_000), None),
    ("timeoutMs over the limit", workflow(timeoutMs=3_600_001), "timeoutMs must be at most"),
]


@on_sqlite
@pytest.mark.parametrize(
    ("case", "definition", "refusal"), SUBMIT_CASES, ids=[c for c, _, _ in SUBMIT_CASES]
)
async def test_submit_limits(
    service: Service, case: str, definition: dict[str, Any], refusal: str | None
) -> None:
    r = await service.execute(workflow=definition)
    if refusal is None:
        assert r.status_code == 200, (case, r.text)
        return
    assert r.status_code == 422, (case, r.text)
    assert refusal in r.json()["detail"], case
    assert await service.count_executions() == 0


@on_sqlite
async def test_a_stored_workflow_is_held_to_the_limits(service: Service) -> None:
    await service.add_workflow("big", workflow(nodes=1001))
    await service.add_workflow("slow", workflow(timeoutMs=3_600_001))
    for wid, limit in (("big", "MAX_WORKFLOW_NODES"), ("slow", "timeoutMs")):
        r = await service.execute(workflowId=wid)
        assert r.status_code == 422, r.text
        assert limit in r.json()["detail"]


@on_sqlite
async def test_the_node_limit_is_a_setting(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    monkeypatch.setenv("MAX_WORKFLOW_NODES", "3")
    get_settings.cache_clear()
    assert (await service.execute(workflow=workflow(nodes=3))).status_code == 200
    r = await service.execute(workflow=workflow(nodes=4))
    assert r.status_code == 422 and "the limit is 3" in r.json()["detail"]


NODE_EXECUTE_CASES = [
    ({"retries": 2, "retryDelayMs": 60_000, "timeoutMs": 3_600_000}, 200, None),
    ({"retries": 3}, 422, "retries must be at most 2"),
    ({"retryDelayMs": 60_001}, 422, "retryDelayMs must be at most 60,000"),
    ({"timeoutMs": 3_600_001}, 422, "timeoutMs must be at most 3,600,000"),
]


@on_sqlite
@pytest.mark.parametrize(("config", "status", "refusal"), NODE_EXECUTE_CASES)
async def test_node_execute_limits(
    service: Service, config: dict[str, Any], status: int, refusal: str | None
) -> None:
    body = {"nodeId": "n1", "nodeType": "trigger", "node": {"config": config}}
    r = await service.client.post("/api/nodes/execute", json=body)
    assert r.status_code == status, r.text
    if refusal:
        assert refusal in r.json()["detail"]


def _huge_row(n: int) -> list[dict[str, int]]:
    return [{f"c{i}": i for i in range(n)}]


LINEAR_CASES: list[tuple[str, Callable[[], object]]] = [
    ("8,000 digits and a letter", lambda: parse_number_string("8" * 8000 + "a")),
    ("a million digits and a letter", lambda: parse_number_string("8" * 1_000_000 + "a")),
    ("a million digits, a point, a million", lambda: to_number("1" * 10**6 + "." + "1" * 10**6)),
    ("a dangling exponent", lambda: to_number("1" * 10**6 + "e" + "5" * 10**6 + "x")),
    ("an int beyond floats", lambda: to_number(10**400)),
    ("open braces", lambda: render_fields("{" * 10**6 + "x", {"a": 1})),
    ("unclosed placeholders", lambda: render_fields("{{a " * 250_000, {"a": 1})),
    ("unclosed template", lambda: render_template("{{" + "a" * 10**6, {"a": 1})),
    ("many placeholders", lambda: render_template("{{a}}" * 200_000, {"a": 1})),
    ("join of wide rows", lambda: merge_by_key(_huge_row(50_000), _huge_row(50_000), "c0", True)),
]


@pytest.mark.parametrize(("case", "work"), LINEAR_CASES, ids=[c for c, _ in LINEAR_CASES])
def test_user_data_is_handled_in_linear_time(case: str, work: Callable[[], object]) -> None:
    started = time.perf_counter()
    work()
    assert time.perf_counter() - started < FAST_S, case


async def test_fan_in_of_5000_nodes_into_one() -> None:
    """Each parent's payload reaches the child in the connections array's order."""
    n = 5000
    nodes = [node(f"p{i}") for i in range(n)] + [node("child", "output")]
    connections = [edge(f"p{i}", "child") for i in reversed(range(n))]
    plan = build_plan(parse_workflow({"nodes": nodes, "connections": connections}), rules_of)

    async def run_node(n_: Any, data: Any, ctx: Any) -> dict[str, Any]:
        out = [n_.id] if n_.id != "child" else data
        return {"success": True, "outputData": out}

    started = time.perf_counter()
    job = Job("e1", "w1", None, {}, plan, None)  # type: ignore[arg-type]
    result = await execute(job, MemoryRecorder(), run_node)
    assert time.perf_counter() - started < FAST_S
    assert result.results["child"]["outputData"] == [f"p{i}" for i in reversed(range(n))]


@on_sqlite
async def test_a_huge_number_input_does_not_freeze_the_worker(service: Service) -> None:
    value = "8" * 1_000_000 + "a"
    wf = {"nodes": [node("m", "manualInput", manualInputVarName="x")], "connections": []}
    started = time.perf_counter()
    r = await service.execute(workflow=wf, inputs={"m": value})
    body = await service.wait(r.json()["executionId"], timeout=FAST_S)
    assert time.perf_counter() - started < FAST_S
    assert body["status"] == "completed"
    assert body["nodeResults"]["m"]["outputData"] == {"x": value}


@on_sqlite
async def test_a_workflow_at_the_submit_limits_runs_to_completion(service: Service) -> None:
    """1,000 nodes and 5,000 connections: a trigger, 998 addField nodes, one output node fed by
    every addField node (with parallel connections making up the count)."""
    adders = [f"a{i}" for i in range(998)]
    nodes = [
        node("t"),
        *(node(a, "addField", addFieldName=a, addFieldValue=1) for a in adders),
        node("out", "output"),
    ]
    connections = [edge("t", a) for a in adders]
    connections += [edge(adders[i % 998], "out", i) for i in range(5000 - len(connections))]
    assert (len(nodes), len(connections)) == (1000, 5000)
    started = time.perf_counter()
    r = await service.execute(workflow={"nodes": nodes, "connections": connections})
    assert r.status_code == 200, r.text
    body = await service.wait(r.json()["executionId"], timeout=120)
    assert body["status"] == "completed", body["error"]
    assert time.perf_counter() - started < 60
    assert body["nodeResults"]["out"]["outputData"] == {a: 1 for a in adders}


# No poison executions: crash resumes are counted on every store; the runner abandons after
# MAX_RESUME_ATTEMPTS of them.

CHAIN = {
    "nodes": [node("t"), node("a", "addField", addFieldName="x", addFieldValue=1)],
    "connections": [edge("t", "a")],
}


async def _queued(store: Store) -> str:
    eid = new_execution_id()
    new = NewExecution(eid, "wf", "WF", None, {}, json.dumps(CHAIN), ExecutionMode.INLINE.value)
    await store.create_execution(new)
    return eid


async def _running(
    store: Store, eid: str, owner: str, lease_s: float, *statuses: NodeStatus
) -> None:
    """`owner` claims the execution and logs node `t` with `statuses` (running first)."""
    (claim,) = await store.claim(owner, 1, lease_s)
    assert claim.execution_id == eid
    await store.start(eid, RunStart(2, ExecutionMode.INLINE.value, None))
    for status in statuses:
        await store.checkpoint(
            eid, Checkpoint([LogRow("t", "trigger", "T", status)], "t", None, {})
        )


async def crash(store: Store, eid: str) -> None:
    """The worker dies with node `t` in flight: its lease just expires."""
    await _running(store, eid, "host:1:dead", 0.001, NodeStatus.RUNNING)
    await asyncio.sleep(0.01)


async def crash_between_nodes(store: Store, eid: str) -> None:
    await _running(store, eid, "host:1:dead", 0.001, NodeStatus.RUNNING, NodeStatus.COMPLETED)
    await asyncio.sleep(0.01)


async def drain(store: Store, eid: str) -> None:
    await _running(store, eid, "host:1:w", 60, NodeStatus.RUNNING)
    await store.release("host:1:w")


async def give_back(store: Store, eid: str) -> None:
    """A renewal without the execution: the run ended interrupted."""
    await _running(store, eid, "host:1:w", 60, NodeStatus.RUNNING)
    await store.renew_leases("host:1:w", [], 60)


async def restart(store: Store, eid: str) -> None:
    await _running(store, eid, "host:8000:w", 60, NodeStatus.RUNNING)
    await store.release_instance("host:8000")


LEAVE_CASES: list[tuple[Callable[[Store, str], Awaitable[None]], int, str | None]] = [
    (crash, 1, "t"),
    (crash_between_nodes, 0, None),
    (drain, 0, None),
    (give_back, 0, None),
    (restart, 0, None),
]


@pytest.mark.parametrize(
    ("leave", "counted", "node_id"), LEAVE_CASES, ids=lambda v: getattr(v, "__name__", str(v))
)
async def test_only_a_crash_with_a_node_in_flight_counts(
    store: Store, leave: Callable[[Store, str], Awaitable[None]], counted: int, node_id: str | None
) -> None:
    eid = await _queued(store)
    await leave(store, eid)
    await leave(store, eid)
    (claim,) = await store.claim("host:2:w", 1, 60)
    assert (claim.attempts, claim.crash_resumes, claim.crashed_node) == (3, 2 * counted, node_id)


@pytest.mark.parametrize(("crashes", "status"), [(3, "completed"), (4, "failed")])
async def test_a_poison_execution_is_abandoned(
    store: Store, make_resources: Any, crashes: int, status: str
) -> None:
    """Claims with an expired lease, again and again: resumed MAX_RESUME_ATTEMPTS (3) times,
    then failed by the next worker naming the node in flight."""
    eid = await _queued(store)
    for _ in range(crashes):
        await crash(store, eid)
    settings = make_settings(EXECUTION_MODE="inline")
    runner = Runner(settings, store, make_resources(), PrefectProbe(None))
    worker = Worker(settings, store, runner)
    assert await worker.claim_and_spawn(1) == 1
    await asyncio.gather(*worker.tasks.values())
    row = await store.get_execution(eid)
    assert row is not None and row["status"] == status
    if status == "failed":
        assert row["error"] == f"Execution abandoned after {crashes} worker crashes at node t"
        logs = await store.get_logs(eid)
        assert (logs[-1]["nodeId"], logs[-1]["status"]) == ("t", "error")
        assert not await store.has_queued()


async def test_graceful_restarts_never_abandon(store: Store, make_resources: Any) -> None:
    """Even past the limit (one crash, MAX_RESUME_ATTEMPTS=0), a resume after a give-back runs."""
    eid = await _queued(store)
    await crash(store, eid)
    for _ in range(5):
        await drain(store, eid)
    settings = make_settings(EXECUTION_MODE="inline", MAX_RESUME_ATTEMPTS=0)
    runner = Runner(settings, store, make_resources(), PrefectProbe(None))
    (claim,) = await store.claim("host:2:w", 1, 60)
    assert await runner.run(claim, asyncio.Event()) == "completed"


async def test_an_older_store_gains_the_crash_counter(sql_store: SqlStore) -> None:
    async with sql_store.write() as conn:
        await conn.exec_driver_sql('ALTER TABLE wos_executions DROP COLUMN "crashResumes"')
    await sql_store.create_all()
    eid = await _queued(sql_store)
    await crash(sql_store, eid)
    (claim,) = await sql_store.claim("host:2:w", 1, 60)
    assert (claim.crash_resumes, claim.crashed_node) == (1, "t")
