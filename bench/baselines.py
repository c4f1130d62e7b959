"""In-process baselines, run by the bench in a subprocess (so it can be killed on a time limit
and its peak RSS is its own):

  plain    the graph walked by plain asyncio calls of the service's handlers
           (`tasks.run_node.run_attempt` per node, topological order): no I/O, the absolute limit.
  durable  the same walk plus one SQLite commit per node (a log row with the node's output +
           an update of the execution row; WAL, synchronous=NORMAL; one connection on one
           writer thread), plus one commit to create and one to finish the execution:
           the floor of any durable engine.
  engine   informative: the service's own engine (`flows.engine.execute`, the inline retry
           loop) with a recorder that writes nothing: the engine's cost without the store.

Usage: python -m bench.baselines SPEC.json  → prints one line `RESULT {json}`.
SPEC: {"kind", "workload", "workflow" | "workflows", "params"}.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (registers every node type)
from config import get_settings
from errors import NodeError
from flows.graph import Plan, assemble_input, build_plan, edge_payload, parse_workflow
from jsonutil import dump_json
from tasks.context import Resources, RunContext, open_resources
from tasks.run_node import run_attempt, run_with_retries

Result = dict[str, Any]


async def walk(plan: Plan, eid: str, resources: Resources, on_node: Any = None) -> str:
    """Run every node once in topological order; returns completed/failed."""
    active: dict[str, list[Any]] = {nid: [] for nid in plan.nodes}
    failed = False
    for nid in plan.order:
        node = plan.nodes[nid]
        run, data, _ = assemble_input(node, active[nid], bool(plan.incoming[nid]), {})
        if not run:
            result: Result = {"success": True, "skipped": True}
        else:
            ctx = RunContext(
                execution_id=eid,
                workflow_id=None,
                organization_id=None,
                inputs={},
                node_id=nid,
                node_type=node.type,
                node_label=node.display_label,
                resources=resources,
            )
            try:
                result = await run_attempt(node, data, ctx)
            except NodeError as exc:
                result, failed = {"success": False, "error": str(exc)}, True
        if on_node is not None:
            await on_node(eid, nid, result)
        for edge in plan.outgoing[nid]:
            live, payload = edge_payload(edge, node, result)
            if live:
                active[edge.toNodeId].append((edge, payload))
    return "failed" if failed else "completed"


class DurableLog:
    """One SQLite connection on one writer thread; every call is one committed transaction."""

    def __init__(self, path: Path) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="durable")
        self.conn: sqlite3.Connection | None = None
        self.pool.submit(self._open, path).result()
        self.seq = 0

    def _open(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE executions (id TEXT PRIMARY KEY, status TEXT, "
            "currentNodeId TEXT, completedNodes INTEGER DEFAULT 0, startedAt REAL, "
            "completedAt REAL)"
        )
        conn.execute(
            "CREATE TABLE logs (id INTEGER PRIMARY KEY, executionId TEXT, nodeId TEXT, "
            "status TEXT, outputData TEXT, ts REAL)"
        )
        conn.execute("CREATE INDEX logs_execution ON logs(executionId)")
        self.conn = conn

    def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        assert self.conn is not None
        self.conn.execute("BEGIN IMMEDIATE")
        for sql, args in statements:
            self.conn.execute(sql, args)
        self.conn.execute("COMMIT")

    async def commit(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self._tx, statements)

    async def begin_execution(self, eid: str) -> None:
        await self.commit(
            [
                (
                    "INSERT INTO executions (id, status, startedAt) VALUES (?, ?, ?)",
                    (eid, "running", time.time()),
                )
            ]
        )

    async def node_done(self, eid: str, nid: str, result: Result) -> None:
        output = dump_json(result)  # the checkpoint holds the node's output (resume needs it)
        await self.commit(
            [
                (
                    "INSERT INTO logs (executionId, nodeId, status, outputData, ts) "
                    "VALUES (?,?,?,?,?)",
                    (
                        eid,
                        nid,
                        "completed" if result.get("success") is not False else "error",
                        output,
                        time.time(),
                    ),
                ),
                (
                    "UPDATE executions SET currentNodeId = ?, completedNodes = completedNodes + 1 "
                    "WHERE id = ?",
                    (nid, eid),
                ),
            ]
        )

    async def finish_execution(self, eid: str, status: str) -> None:
        await self.commit(
            [
                (
                    "UPDATE executions SET status = ?, completedAt = ? WHERE id = ?",
                    (status, time.time(), eid),
                )
            ]
        )


class NullRecorder:
    async def checkpoint(self, *_args: Any, **_kw: Any) -> bool:
        return True


class Runner:
    def __init__(self, kind: str, resources: Resources, workdir: Path) -> None:
        self.kind, self.resources = kind, resources
        self.durable = DurableLog(workdir / "durable.sqlite") if kind == "durable" else None
        self.n = 0

    async def run(self, plan: Plan) -> str:
        self.n += 1
        eid = f"b{self.n}"
        if self.kind == "engine":
            from flows.engine import Job, execute

            job = Job(eid, None, None, {}, plan, self.resources)
            return (await execute(job, NullRecorder(), run_with_retries)).status
        if self.durable is None:
            return await walk(plan, eid, self.resources)
        await self.durable.begin_execution(eid)
        status = await walk(plan, eid, self.resources, self.durable.node_done)
        await self.durable.finish_execution(eid, status)
        return status


def plan_of(workflow: dict[str, Any]) -> Plan:
    return build_plan(parse_workflow(workflow))


async def w1(runner: Runner, spec: dict[str, Any]) -> Result:
    out: Result = {}
    for key, workflow in spec["workflows"].items():
        plan = plan_of(workflow)
        await runner.run(plan)  # warm-up
        times, statuses = [], []
        for _ in range(spec["params"]["repeats"]):
            t0 = time.perf_counter()
            statuses.append(await runner.run(plan))
            times.append(time.perf_counter() - t0)
        out[key] = {"times": times, "statuses": statuses, "nodes": len(plan.nodes)}
    return out


async def closed_loop(
    runner: Runner, plan: Plan, total: int, concurrency: int, budget_s: float
) -> Result:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + budget_s
    t0 = time.perf_counter()

    async def client() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            s = time.perf_counter()
            status = await runner.run(plan)
            latencies.append(time.perf_counter() - s)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"elapsed": time.perf_counter() - t0, "e2e": latencies, "statuses": statuses}


async def w2(runner: Runner, spec: dict[str, Any]) -> Result:
    plan = plan_of(spec["workflow"])
    p = spec["params"]
    await closed_loop(runner, plan, p["warmup"], 1, 30)
    return {
        f"c{c}": await closed_loop(runner, plan, p["counts"][str(c)], c, p["budget_s"])
        for c in p["concurrency"]
    }


async def w3(runner: Runner, spec: dict[str, Any]) -> Result:
    plan = plan_of(spec["workflow"])
    await runner.run(plan)  # warm-up: opens a connection to the upstream
    n = spec["params"]["executions"]
    t0 = time.perf_counter()
    statuses = await asyncio.gather(*(runner.run(plan) for _ in range(n)))
    return {
        "elapsed": time.perf_counter() - t0,
        "statuses": {s: statuses.count(s) for s in set(statuses)},
    }


async def w5(runner: Runner, spec: dict[str, Any]) -> Result:
    workflow = spec["workflow"]
    if "workflow_file" in spec:
        workflow = json.loads(Path(spec["workflow_file"]).read_text())
    t0 = time.perf_counter()
    plan = plan_of(workflow)
    status = await runner.run(plan)
    return {"elapsed": time.perf_counter() - t0, "status": status}


async def w5_ladder(runner: Runner, spec: dict[str, Any]) -> Result:
    """Time of the W5 graph at growing sizes (to extrapolate what does not finish)."""
    from bench.workflows import inline_source, w5_bigdata, w5_rows

    out = []
    for n in spec["params"]["sizes"]:
        workflow = w5_bigdata(
            n, inline_source(w5_rows(n, "A"), "a.csv"), inline_source(w5_rows(n, "B"), "b.csv")
        )
        t0 = time.perf_counter()
        status = await runner.run(plan_of(workflow))
        out.append({"rows": n, "elapsed": time.perf_counter() - t0, "status": status})
    return {"ladder": out}


async def main(spec: dict[str, Any]) -> Result:
    settings = get_settings()
    resources = open_resources(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="wos-bench-baseline-") as tmp:
            runner = Runner(spec["kind"], resources, Path(tmp))
            fn = {"W1": w1, "W2": w2, "W3": w3, "W5": w5, "W5ladder": w5_ladder}[spec["workload"]]
            result = await fn(runner, spec)
    finally:
        await resources.aclose()
    result["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = asyncio.run(main(spec))  # the default loop, like the service's worker process
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
