"""Issue 9, fan-in: the merged input of a node fed by many parallel connections is measured
against MAX_NODE_OUTPUT_ROWS/MAX_NODE_OUTPUT_BYTES before it is built, the node fails naming
the limit, fast and in bounded memory; merging stays linear and keeps rule 8's results."""

import random
import time
import tracemalloc
from typing import Any

import pytest

from errors import NodeExecutionError
from flows.engine import Job, execute
from flows.graph import FanInLimits, build_plan, check_fan_in, merge_payloads, parse_workflow
from tasks.context import Resources
from tasks.limits import estimate_bytes
from tasks.registry import rules_of
from tests.conftest import MakeResources, Service
from tests.test_engine import MemoryRecorder, edge, node
from tests.test_security_limits import on_sqlite

FAST_S = 10.0  # generous: 2 shared cores
LIMITS = FanInLimits(rows=1_000_000, bytes=64 * 1024 * 1024, measure=estimate_bytes)
ROWS_1000 = FanInLimits(1000, 10**9, estimate_bytes)
ROWS = [{"id": i, "name": f"row {i}"} for i in range(1000)]


def naive_merge(payloads: list[Any]) -> Any:
    """Rule 8 as it reads: dicts merged in order, else one concatenated list without nulls."""
    if all(isinstance(p, dict) for p in payloads):
        merged: dict[str, Any] = {}
        for p in payloads:
            merged.update(p)
        return merged
    out: list[Any] = []
    for p in payloads:
        if isinstance(p, list):
            out.extend(p)
        elif p is not None:
            out.append(p)
    return out


A, B, C = {"x": 1, "y": 2}, {"y": 3, "z": 4}, {"w": 5, "x": 6}
# (case, payloads)
MERGES = [
    ("objects in order", [A, B, C]),
    ("the same object again wins last", [A, B, A]),
    ("repeated objects", [B, A, B, C, A, B]),
    ("lists and scalars", [[1, 2], 3, None, [4], "s"]),
    ("parallel copies of one list", [[1, 2]] * 5),
    ("objects among lists", [A, [1], B]),
    ("all nulls", [None, None]),
]  # fmt: skip


@pytest.mark.parametrize("payloads", [c[1] for c in MERGES], ids=[c[0] for c in MERGES])
def test_merge_keeps_rule_8(payloads: list[Any]) -> None:
    merged = merge_payloads(payloads, LIMITS)
    expected = naive_merge(payloads)
    assert merged == expected
    assert list(merged) == list(expected)  # key order too


def test_merge_of_random_objects_matches_the_rule() -> None:
    rng = random.Random(9)
    pool = [{rng.choice("abcdefgh"): i for _ in range(3)} for i in range(6)]
    for _ in range(300):
        payloads = [rng.choice(pool) for _ in range(rng.randrange(2, 12))]
        merged = merge_payloads(payloads, LIMITS)
        assert list(merged.items()) == list(naive_merge(payloads).items())


# (case, payloads, limits, setting named)
OVER = [
    ("5,000 copies of 1,000 rows", [ROWS] * 5000, LIMITS, "MAX_NODE_OUTPUT_ROWS"),
    ("one row over", [[0] * 600, [0] * 401], ROWS_1000, "MAX_NODE_OUTPUT_ROWS"),
    ("big strings", [["x" * 400_000]] * 200, LIMITS, "MAX_NODE_OUTPUT_BYTES"),
    ("scalars", ["x" * 100_000] * 1000, LIMITS, "MAX_NODE_OUTPUT_BYTES"),
    ("distinct big objects", [{f"k{i}": "v" * 100_000} for i in range(1000)], LIMITS,
     "MAX_NODE_OUTPUT_BYTES"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payloads", "limits", "setting"), [c[1:] for c in OVER], ids=[c[0] for c in OVER]
)
def test_a_fan_in_over_the_limits_fails_naming_the_limit(
    payloads: list[Any], limits: FanInLimits, setting: str
) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(NodeExecutionError, match=f"Fan-in of .* \\({setting}\\)"):
            merge_payloads(payloads, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < FAST_S
    assert peak < 20 * 1024 * 1024, f"{peak:,} bytes allocated before failing"


def test_the_limits_themselves_are_accepted() -> None:
    exact = [[0] * 600, [0] * 400]
    assert len(merge_payloads(exact, ROWS_1000)) == 1000
    check_fan_in([["x" * 1000]] * 5, FanInLimits(10, 5 * 1003 + 2, estimate_bytes))


def test_a_5000_way_fan_in_under_the_limits_stays_linear() -> None:
    rows = [[i] for i in range(5000)]
    started = time.perf_counter()
    assert merge_payloads(rows, LIMITS) == list(range(5000))
    same = {f"k{i}": i for i in range(100_000)}
    assert merge_payloads([same] * 5000, LIMITS) == same
    assert time.perf_counter() - started < 2.0


async def test_the_node_fed_by_5000_connections_fails(make_resources: MakeResources) -> None:
    """One source outputs 1,000 rows; 5,000 parallel connections into one node make 5,000,000
    rows: the node fails with the limit's name without running, its sibling still runs."""
    nodes = [node("src"), node("sink", "output"), node("other", "output")]
    connections = [edge("src", "sink", id=f"c{i}") for i in range(5000)]
    connections.append(edge("src", "other"))
    plan = build_plan(parse_workflow({"nodes": nodes, "connections": connections}), rules_of)
    ran: list[str] = []

    async def run_node(n: Any, data: Any, ctx: Any) -> dict[str, Any]:
        ran.append(n.id)
        return {"success": True, "outputData": ROWS if n.id == "src" else data}

    resources: Resources = make_resources()
    recorder = MemoryRecorder()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = await execute(Job("e1", None, None, {}, plan, resources), recorder, run_node)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < FAST_S
    assert peak < 50 * 1024 * 1024
    assert sorted(ran) == ["other", "src"]
    error = result.results["sink"]["error"]
    assert "Fan-in of 5,000 connections gives 5,000,000 rows" in error
    assert "MAX_NODE_OUTPUT_ROWS" in error
    assert result.error is not None and "MAX_NODE_OUTPUT_ROWS" in result.error
    (row,) = [r for r in recorder.rows if r.node_id == "sink"]
    assert row.status == "error" and "MAX_NODE_OUTPUT_ROWS" in (row.error or "")
    assert len(result.results["other"]["outputData"]) == 1000


async def test_a_join_fed_by_parallel_connections_is_measured_too(
    make_resources: MakeResources,
) -> None:
    nodes = [node("src"), node("j", "join")]
    connections = [edge("src", "j", id=f"a{i}", inputPort="A") for i in range(3000)]
    connections.append(edge("src", "j", id="b", inputPort="B"))
    plan = build_plan(parse_workflow({"nodes": nodes, "connections": connections}), rules_of)

    async def run_node(n: Any, data: Any, ctx: Any) -> dict[str, Any]:
        assert n.id == "src", "the join must not run"
        return {"success": True, "outputData": ROWS}

    job = Job("e1", None, None, {}, plan, make_resources())
    result = await execute(job, MemoryRecorder(), run_node)
    assert "MAX_NODE_OUTPUT_ROWS" in result.results["j"]["error"]


@on_sqlite
async def test_a_service_run_with_a_5000_way_fan_in_fails_the_node(service: Service) -> None:
    """Through the API: a webhook's 1,000 rows sent along 5,000 connections (the submit limit)."""
    nodes = [node("hook", "webhook"), node("out", "output")]
    connections = [edge("hook", "out", id=f"c{i}") for i in range(5000)]
    started = time.perf_counter()
    r = await service.execute(
        workflow={"nodes": nodes, "connections": connections}, inputs={"_webhookData": ROWS}
    )
    assert r.status_code == 200, r.text
    body = await service.wait(r.json()["executionId"], timeout=60)
    assert time.perf_counter() - started < 60
    assert body["status"] == "failed"
    assert "MAX_NODE_OUTPUT_ROWS" in body["nodeResults"]["out"]["error"]
    assert len(body["nodeResults"]["hook"]["outputData"]) == 1000
