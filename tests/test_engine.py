"""Graph rules and the engine walk, with a plain function in place of the Prefect task."""

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from database.interfaces import Checkpoint, LogRow
from errors import CycleDetected, GraphValidationError, NodeExecutionError
from flows.engine import Job, execute
from flows.graph import build_plan, parse_workflow
from tasks.context import Resources
from tasks.registry import rules_of

ROOT = Path(__file__).resolve().parent.parent


class MemoryRecorder:
    """In-memory Recorder: keeps every checkpoint so tests can assert on order and content."""

    def __init__(self) -> None:
        self.rows: list[LogRow] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.cancelled = False

    async def checkpoint(self, execution_id: str, checkpoint: Checkpoint) -> bool:
        live = not self.cancelled
        self.rows.extend(r for r in checkpoint.rows if live or r.status != "running")
        self.checkpoints.append(
            {
                "rows": checkpoint.rows,
                "current": checkpoint.current_node_id,
                "counts": checkpoint.counts,
            }
        )
        return live


def node(nid: str, type_: str = "step", **config: Any) -> dict[str, Any]:
    return {"id": nid, "type": type_, "label": nid.upper(), "config": config}


def edge(src: str, dst: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"{src}->{dst}", "fromNodeId": src, "toNodeId": dst, **extra}


class FakeNodes:
    """Plays every node type the tests need and records each call."""

    def __init__(self, fail: set[str] | None = None, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail or set()
        self.delay = delay

    async def __call__(self, n: Any, data: Any, ctx: Any) -> dict[str, Any]:
        self.calls.append((n.id, data))
        if self.delay:
            await asyncio.sleep(self.delay)
        if n.id in self.fail:
            raise NodeExecutionError(f"{n.id} broke")
        cfg = n.config or {}
        if n.type == "condition":
            if cfg.get("perRow"):
                rows = data or []
                t = [r for r in rows if r["v"] > 1]
                f = [r for r in rows if r["v"] <= 1]
                return {
                    "success": True,
                    "message": "",
                    "outputData": t,
                    "conditionResult": bool(t),
                    "trueRecords": t,
                    "falseRecords": f,
                }
            return {
                "success": True,
                "message": "",
                "outputData": data,
                "conditionResult": bool(cfg.get("result")),
            }
        if n.type == "splitColumns":
            return {
                "success": True,
                "message": "",
                "outputData": "a",
                "outputA": "a",
                "outputB": "b",
            }
        out = cfg.get("out", data if data is not None else {n.id: True})
        return {"success": True, "message": n.id, "outputData": out}


@pytest.fixture
def resources() -> Resources:
    return Resources(Settings(), None)  # type: ignore[arg-type]


async def run(
    resources: Resources,
    nodes: list[dict[str, Any]],
    edges: list[dict[str, Any]],
    fake: FakeNodes | None = None,
    inputs: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
):
    fake = fake or FakeNodes()
    recorder = MemoryRecorder()
    plan = build_plan(parse_workflow({"nodes": nodes, "connections": edges}), rules_of)
    job = Job("e1", "w1", None, inputs or {}, plan, resources, previous or {})
    outcome = await execute(job, recorder, fake)
    return outcome, fake, recorder


async def test_chain_passes_output_downstream(resources: Resources) -> None:
    outcome, fake, rec = await run(
        resources, [node("a", out={"x": 1}), node("b"), node("c")], [edge("a", "b"), edge("b", "c")]
    )
    assert outcome.status == "completed" and outcome.error is None
    assert fake.calls == [("a", None), ("b", {"x": 1}), ("c", {"x": 1})]
    assert [(r.node_id, r.status) for r in rec.rows] == [
        ("a", "running"),
        ("a", "completed"),
        ("b", "running"),
        ("b", "completed"),
        ("c", "running"),
        ("c", "completed"),
    ]


async def test_checkpoint_of_parent_is_committed_before_child_starts(resources: Resources) -> None:
    _, _, rec = await run(resources, [node("a"), node("b")], [edge("a", "b")])
    statuses = [[(r.node_id, r.status) for r in cp["rows"]] for cp in rec.checkpoints]
    assert statuses == [
        [("a", "running")],
        [("a", "completed"), ("b", "running")],
        [("b", "completed")],
    ]


@pytest.mark.parametrize(("result", "taken", "skipped"), [(True, "t", "f"), (False, "f", "t")])
async def test_batch_condition_routes_by_output_type(
    resources: Resources, result: bool, taken: str, skipped: str
) -> None:
    nodes = [
        node("a", out={"v": 5}),
        node("c", "condition", result=result),
        node("t"),
        node("f"),
        node("after_f"),
    ]
    edges = [
        edge("a", "c"),
        edge("c", "t", outputType="true"),
        edge("c", "f", outputType="false"),
        edge("f", "after_f"),
    ]
    outcome, fake, rec = await run(resources, nodes, edges)
    called = [c[0] for c in fake.calls]
    assert taken in called and skipped not in called
    assert outcome.results[skipped] == {
        "success": True,
        "skipped": True,
        "message": outcome.results[skipped]["message"],
    }
    assert "outputData" not in outcome.results[skipped]
    if skipped == "f":
        assert outcome.results["after_f"]["skipped"] is True
    assert outcome.status == "completed"
    assert [r.status for r in rec.rows if r.node_id == skipped] == ["skipped"]


async def test_from_port_is_the_fallback_of_output_type(resources: Resources) -> None:
    nodes = [node("c", "condition", result=False), node("t"), node("f")]
    edges = [edge("c", "t", fromPort="true"), edge("c", "f", fromPort="false")]
    outcome, fake, _ = await run(resources, nodes, edges)
    assert [c[0] for c in fake.calls] == ["c", "f"]


async def test_per_row_condition_feeds_both_branches(resources: Resources) -> None:
    rows = [{"v": 1}, {"v": 2}]
    nodes = [node("a", out=rows), node("c", "condition", perRow=True), node("t"), node("f")]
    edges = [edge("a", "c"), edge("c", "t", outputType="true"), edge("c", "f", outputType="false")]
    _, fake, _ = await run(resources, nodes, edges)
    assert ("t", [{"v": 2}]) in fake.calls and ("f", [{"v": 1}]) in fake.calls


async def test_split_columns_routes_a_and_b(resources: Resources) -> None:
    nodes = [node("s", "splitColumns"), node("x"), node("y")]
    edges = [edge("s", "x", outputType="A"), edge("s", "y", outputType="B")]
    _, fake, _ = await run(resources, nodes, edges)
    assert ("x", "a") in fake.calls and ("y", "b") in fake.calls


async def test_failure_skips_descendants_but_not_independent_branch(resources: Resources) -> None:
    nodes = [node("t"), node("bad"), node("below"), node("ok"), node("ok2")]
    edges = [edge("t", "bad"), edge("bad", "below"), edge("t", "ok"), edge("ok", "ok2")]
    outcome, fake, rec = await run(resources, nodes, edges, FakeNodes(fail={"bad"}))
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.startswith("Nodes failed: bad")
    assert outcome.results["bad"] == {
        "success": False,
        "error": "bad broke",
        "message": "bad broke",
    }
    assert outcome.results["below"]["skipped"] is True
    assert "ok2" in [c[0] for c in fake.calls]
    error_rows = [r for r in rec.rows if r.status == "error"]
    assert len(error_rows) == 1 and error_rows[0].duration_ms is not None


async def test_node_reachable_through_another_active_edge_still_runs(resources: Resources) -> None:
    nodes = [node("t"), node("bad"), node("ok", out={"k": 1}), node("merge")]
    edges = [edge("t", "bad"), edge("t", "ok"), edge("bad", "merge"), edge("ok", "merge")]
    _, fake, _ = await run(resources, nodes, edges, FakeNodes(fail={"bad"}))
    assert ("merge", {"k": 1}) in fake.calls


@pytest.mark.parametrize(
    ("payloads", "merged"),
    [
        ([{"a": 1, "b": 1}, {"b": 2}], {"a": 1, "b": 2}),
        ([[1, 2], {"x": 1}, None], [1, 2, {"x": 1}]),
        ([[1], [2, 3]], [1, 2, 3]),
    ],
)
async def test_fan_in_merges_in_connection_order(
    resources: Resources, payloads: list[Any], merged: Any
) -> None:
    nodes = [node(f"p{i}", out=p) for i, p in enumerate(payloads)] + [node("m")]
    edges = [edge(f"p{i}", "m") for i in range(len(payloads))]
    _, fake, _ = await run(resources, nodes, edges)
    assert fake.calls[-1] == ("m", merged)


async def test_join_gets_a_and_b_or_is_skipped(resources: Resources) -> None:
    nodes = [node("a", out=[1]), node("b", out=[2]), node("b2", out=[3]), node("j", "join")]
    edges = [
        edge("a", "j", inputPort="A"),
        edge("b", "j", inputPort="B"),
        edge("b2", "j", inputPort="B"),
    ]
    _, fake, _ = await run(resources, nodes, edges)
    assert fake.calls[-1] == ("j", {"A": [1], "B": [2, 3]})
    outcome, fake, _ = await run(resources, nodes[:2] + nodes[3:], [edge("a", "j")])
    assert outcome.results["j"]["skipped"] is True


async def test_join_with_failed_side_is_skipped(resources: Resources) -> None:
    nodes = [node("a", out=[1]), node("b"), node("j", "join")]
    edges = [edge("a", "j", inputPort="A"), edge("b", "j", inputPort="B")]
    outcome, _, _ = await run(resources, nodes, edges, FakeNodes(fail={"b"}))
    assert outcome.results["j"]["skipped"] is True


async def test_webhook_root_gets_webhook_data(resources: Resources) -> None:
    nodes = [node("w", "webhook"), node("w2", "webhook", webhookData={"c": 1}), node("r")]
    _, fake, _ = await run(resources, nodes, [], inputs={"_webhookData": [1]})
    assert sorted(fake.calls, key=str) == sorted([("w", [1]), ("w2", [1]), ("r", None)], key=str)
    _, fake, _ = await run(resources, nodes[1:2], [], inputs={})
    assert fake.calls == [("w2", {"c": 1})]


def test_cycle_is_detected_before_anything_runs() -> None:
    wf = parse_workflow(
        {
            "nodes": [node("a"), node("b"), node("c")],
            "connections": [edge("a", "b"), edge("b", "c"), edge("c", "b")],
        }
    )
    with pytest.raises(CycleDetected, match="Circular dependency detected"):
        build_plan(wf, rules_of)


def test_dangling_edges_and_unconnected_comments_are_dropped() -> None:
    wf = parse_workflow(
        {
            "nodes": [node("a"), node("note", "comment"), node("c2", "comment")],
            "connections": [edge("a", "ghost"), edge("a", "c2")],
        }
    )
    plan = build_plan(wf, rules_of)
    assert plan.order == ["a", "c2"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"nodes": [{"id": "a"}]}, "nodes.0.type"),
        ({"nodes": [node("a"), node("a")]}, "Duplicate node id"),
    ],
)
def test_invalid_workflow_data_is_refused_clearly(data: Any, message: str) -> None:
    with pytest.raises(GraphValidationError, match=message):
        parse_workflow(data)


def test_missing_arrays_default_to_empty() -> None:
    assert build_plan(parse_workflow('{"nodes": null}'), rules_of).order == []


async def test_empty_workflow_completes(resources: Resources) -> None:
    outcome, fake, _ = await run(resources, [], [])
    assert outcome.status == "completed" and outcome.node_results == "{}" and not fake.calls


async def test_previous_results_are_adopted_without_running(resources: Resources) -> None:
    previous = {"a": {"success": True, "message": "", "outputData": {"from": "checkpoint"}}}
    outcome, fake, _ = await run(
        resources, [node("a"), node("b")], [edge("a", "b")], previous=previous
    )
    assert fake.calls == [("b", {"from": "checkpoint"})]
    assert outcome.results["a"] == previous["a"]


async def test_cancel_stops_new_nodes_and_aborts_in_flight(resources: Resources) -> None:
    cancel = asyncio.Event()
    recorder = MemoryRecorder()
    plan = build_plan(
        parse_workflow({"nodes": [node("a"), node("b")], "connections": [edge("a", "b")]}),
        rules_of,
    )
    job = Job("e1", "w1", None, {}, plan, resources)
    fake = FakeNodes(delay=5)
    task = asyncio.create_task(execute(job, recorder, fake, cancel))
    await asyncio.sleep(0.05)
    cancel.set()
    outcome = await asyncio.wait_for(task, 2)
    assert outcome.status == "cancelled"
    assert [c[0] for c in fake.calls] == ["a"]
    assert [(r.node_id, r.status, r.error) for r in recorder.rows][-1] == (
        "a",
        "error",
        "Execution cancelled by user",
    )


async def test_drain_lets_in_flight_finish_and_starts_nothing_new(resources: Resources) -> None:
    drain = asyncio.Event()
    recorder = MemoryRecorder()
    plan = build_plan(
        parse_workflow({"nodes": [node("a"), node("b")], "connections": [edge("a", "b")]}),
        rules_of,
    )
    job = Job("e1", "w1", None, {}, plan, resources)
    fake = FakeNodes(delay=0.1)
    task = asyncio.create_task(execute(job, recorder, fake, None, drain))
    await asyncio.sleep(0.02)
    drain.set()
    outcome = await asyncio.wait_for(task, 2)
    assert outcome.status == "interrupted"
    assert [c[0] for c in fake.calls] == ["a"] and "a" in outcome.results


class FailingRecorder(MemoryRecorder):
    """Raises on checkpoint number `fail_at` (1-based), like a database that went away."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    async def checkpoint(self, execution_id: str, checkpoint: Checkpoint) -> bool:
        if len(self.checkpoints) + 1 == self.fail_at:
            raise RuntimeError("checkpoint write failed")
        return await super().checkpoint(execution_id, checkpoint)


async def test_failed_checkpoint_cancels_and_awaits_in_flight_nodes(resources: Resources) -> None:
    """Bug 2: no node (an http call, an email) may go on unowned once `execute` raised."""
    events: list[str] = []

    async def run_node(n: Any, data: Any, ctx: Any) -> dict[str, Any]:
        if n.id == "fast":
            return {"success": True, "message": "", "outputData": {}}
        try:
            await asyncio.sleep(5)
            events.append("slow sent its request")
        except asyncio.CancelledError:
            events.append("slow cancelled")
            raise
        finally:
            await asyncio.sleep(0)  # cleanup that needs the loop: awaited, not abandoned
            events.append("slow stopped")
        return {"success": True, "message": "", "outputData": {}}

    plan = build_plan(parse_workflow({"nodes": [node("fast"), node("slow")]}), rules_of)
    job = Job("e1", "w1", None, {}, plan, resources)
    with pytest.raises(RuntimeError, match="checkpoint write failed"):
        await asyncio.wait_for(execute(job, FailingRecorder(fail_at=2), run_node), 2)
    assert events == ["slow cancelled", "slow stopped"]


def test_engine_import_loads_no_database_library() -> None:
    """The engine is pure: its import (and the store interfaces it uses) pulls in no SQLAlchemy."""
    code = (
        "import sys, flows.engine\n"
        "db = ('sqlalchemy', 'aiosqlite', 'asyncpg')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in db]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
