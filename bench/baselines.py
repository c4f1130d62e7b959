"""In-process baselines, run by the bench in a subprocess (so it can be killed on a time limit
and its peak RSS is its own). Both walk the graph with the service's own engine
(`flows.engine.execute`), each node one call of its handler (`tasks.run_node.run_attempt`):

  plain    a recorder that writes nothing: no I/O, the absolute limit.
  durable  a recorder that commits every checkpoint to SQLite (the node's log rows with its
           output + an update of the execution row; WAL, synchronous=NORMAL; one connection on
           one writer thread), plus one commit to create and one to finish the execution:
           the floor of any durable engine.

Usage: python -m bench.baselines SPEC.json  → prints one line `RESULT {json}`.
SPEC: {"kind", "workload", "workflow" | "workflows" | "workflow_file", "params"}.
"""

import asyncio
import json
import logging
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (registers every node type)
from bench.client import summary_ms
from bench.workflows import inline_source, w5_bigdata, w5_rows
from config import get_settings
from database.interfaces import Checkpoint
from flows.engine import Job, execute
from flows.graph import Plan, build_plan, parse_workflow
from tasks.context import Resources, open_resources
from tasks.registry import rules_of
from tasks.run_node import run_attempt

logger = logging.getLogger(__name__)

Result = dict[str, Any]
MB = 1024 * 1024
Statement = tuple[str, tuple[Any, ...]]
SCHEMA = (
    "CREATE TABLE executions (id TEXT PRIMARY KEY, status TEXT, currentNodeId TEXT, "
    "completedNodes INTEGER DEFAULT 0, failedNodes INTEGER DEFAULT 0, "
    "skippedNodes INTEGER DEFAULT 0, startedAt REAL, completedAt REAL)",
    "CREATE TABLE logs (id INTEGER PRIMARY KEY, executionId TEXT, nodeId TEXT, status TEXT, "
    "inputData TEXT, outputData TEXT, error TEXT, ts REAL)",
    "CREATE INDEX logs_execution ON logs(executionId)",
)


class NullRecorder:
    """Checkpoints go nowhere."""

    async def checkpoint(self, *_args: Any, **_kwargs: Any) -> bool:
        return True


class SqliteRecorder:
    """One SQLite connection on one writer thread; every call is one committed transaction."""

    def __init__(self, path: Path) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="durable")
        self.conn = self.pool.submit(self._open, path).result()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            conn.execute(statement)
        return conn

    def _tx(self, statements: list[Statement]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        for sql, args in statements:
            self.conn.execute(sql, args)
        self.conn.execute("COMMIT")

    async def commit(self, *statements: Statement) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self._tx, list(statements))

    async def checkpoint(self, execution_id: str, checkpoint: Checkpoint) -> bool:
        rows, counts = checkpoint.rows, checkpoint.counts
        now = time.time()
        logs: list[Statement] = [
            (
                "INSERT INTO logs (executionId, nodeId, status, inputData, outputData, error, ts)"
                " VALUES (?,?,?,?,?,?,?)",
                (execution_id, r.node_id, r.status, r.input_json, r.output_json, r.error, now),
            )
            for r in rows
        ]
        done, failed, skipped = (
            counts.get(k) for k in ("completedNodes", "failedNodes", "skippedNodes")
        )
        update = (
            "UPDATE executions SET currentNodeId = ?, completedNodes = COALESCE(?, completedNodes),"
            " failedNodes = COALESCE(?, failedNodes), skippedNodes = COALESCE(?, skippedNodes)"
            " WHERE id = ?",
            (checkpoint.current_node_id, done, failed, skipped, execution_id),
        )
        await self.commit(*logs, update)
        return True


class Runner:
    def __init__(self, kind: str, resources: Resources, workdir: Path) -> None:
        self.resources = resources
        self.durable = SqliteRecorder(workdir / "durable.sqlite") if kind == "durable" else None
        self.n = 0

    async def run(self, plan: Plan) -> str:
        self.n += 1
        eid = f"b{self.n}"
        job = Job(
            execution_id=eid,
            workflow_id=None,
            organization_id=None,
            inputs={},
            plan=plan,
            resources=self.resources,
        )
        if self.durable is None:
            return (await execute(job, NullRecorder(), run_attempt)).status
        await self.durable.commit(
            (
                "INSERT INTO executions (id, status, startedAt) VALUES (?, ?, ?)",
                (eid, "running", time.time()),
            )
        )
        status = (await execute(job, self.durable, run_attempt)).status
        await self.durable.commit(
            (
                "UPDATE executions SET status = ?, completedAt = ? WHERE id = ?",
                (status, time.time(), eid),
            )
        )
        return status


def plan_of(workflow: dict[str, Any]) -> Plan:
    return build_plan(parse_workflow(workflow), rules_of)


async def timed(runner: Runner, workflow: dict[str, Any]) -> tuple[str, float]:
    """(status, seconds) of one execution, planning included."""
    t0 = time.perf_counter()
    status = await runner.run(plan_of(workflow))
    return status, time.perf_counter() - t0


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
        median = statistics.median(times) if times else None
        out[key] = {
            "nodes": len(plan.nodes),
            "runs": len(times),
            "completed": statuses.count("completed"),
            "statuses": statuses,
            "total_s": median,
            "phase_s": median,  # in process, the whole run is the node phase
        }
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
    elapsed = time.perf_counter() - t0
    completed = statuses.get("completed", 0)
    return {
        "completed": completed,
        "failed": statuses.get("failed", 0),
        "unfinished": 0,
        "submit_errors": 0,
        "elapsed": elapsed,
        "exec_s": completed / elapsed if elapsed else None,
        "e2e_ms": summary_ms(latencies),
    }


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
    elapsed = time.perf_counter() - t0
    alone = {
        "executions": n,
        "statuses": {s: statuses.count(s) for s in set(statuses)},
        "elapsed": elapsed,
        "unfinished": 0,
        "complete": statuses.count("completed") == n,
        "peak_mb": max_rss() / MB,
    }
    return {"ideal_s": spec["ideal_s"], "alone": alone}


async def w5(runner: Runner, spec: dict[str, Any]) -> Result:
    status, elapsed = await timed(runner, json.loads(Path(spec["workflow_file"]).read_text()))
    return {"elapsed": elapsed, "status": status}


async def w5_ladder(runner: Runner, spec: dict[str, Any]) -> Result:
    """Time of the W5 graph at growing sizes (to extrapolate what does not finish)."""
    out = []
    for n in spec["params"]["sizes"]:
        a, b = inline_source(w5_rows(n, "A"), "a.csv"), inline_source(w5_rows(n, "B"), "b.csv")
        status, elapsed = await timed(runner, w5_bigdata(n, a, b))
        out.append({"rows": n, "elapsed": elapsed, "status": status})
    return {"ladder": out}


def max_rss() -> int:
    """Peak RSS of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W5": w5, "W5ladder": w5_ladder}


async def main(spec: dict[str, Any]) -> Result:
    resources = open_resources(get_settings())
    try:
        with tempfile.TemporaryDirectory(prefix="wos-bench-baseline-") as tmp:
            runner = Runner(spec["kind"], resources, Path(tmp))
            result = await WORKLOADS[spec["workload"]](runner, spec)
    finally:
        await resources.aclose()
    result["max_rss"] = max_rss()
    return result


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = asyncio.run(main(spec))  # the default loop, like the service's worker process
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
