"""Baseline 3: the naive Prefect design the original service used, rebuilt for comparison.

One async `@flow` per execution, one `@task` per node (Prefect's defaults: default cache policy,
default logging), awaited in the API process's event loop (`asyncio.create_task` right after
the POST answers, like FastAPI's BackgroundTasks). The walk is the service's engine
(`flows.engine.execute`, checkpoints to nowhere) and the node handlers are the service's own
(`tasks.run_node.run_attempt`), so only the orchestration differs. Status lives in memory (no
database writes at all: this flatters the baseline).

Run by the bench: `uvicorn bench.naive_prefect:app` with PREFECT_API_URL pointing at an
embedded server started with `python -m flows.prefect_server`.
"""

import asyncio
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from prefect import flow, task

import tasks  # noqa: F401  (registers every node type)
from bench.baselines import NullRecorder
from config import get_settings
from flows import engine
from flows.graph import build_plan, parse_workflow
from models import NodeDef
from tasks.context import Resources, RunContext, open_resources
from tasks.registry import rules_of
from tasks.run_node import run_attempt

app = FastAPI(title="naive Prefect baseline")
WORKFLOWS: dict[str, Any] = {}
EXECUTIONS: dict[str, dict[str, Any]] = {}
RUNNING: set[asyncio.Task[None]] = set()
_resources: Resources | None = None


def resources() -> Resources:
    global _resources
    if _resources is None:
        _resources = open_resources(get_settings())
    return _resources


@task(name="node")
async def node_task(node: dict[str, Any], data: Any, execution_id: str) -> dict[str, Any]:
    nd = NodeDef.model_validate(node)
    ctx = RunContext(
        execution_id=execution_id,
        workflow_id=None,
        organization_id=None,
        inputs={},
        node_id=nd.id,
        node_type=nd.type,
        node_label=nd.display_label,
        resources=resources(),
    )
    return await run_attempt(nd, data, ctx)


async def run_node(node: NodeDef, data: Any, ctx: RunContext) -> dict[str, Any]:
    """Every node is a task run, its inputs plain values (the default cache policy hashes them)."""
    EXECUTIONS[ctx.execution_id]["currentNodeId"] = node.id
    return await node_task(node.model_dump(), data, ctx.execution_id)


@flow(name="naive-workflow")
async def workflow_flow(execution_id: str, workflow_id: str) -> str:
    row = EXECUTIONS[execution_id]
    row["status"], row["startedAt"] = "running", time.time()
    job = engine.Job(
        execution_id=execution_id,
        workflow_id=workflow_id,
        organization_id=None,
        inputs={},
        plan=build_plan(parse_workflow(WORKFLOWS[workflow_id]), rules_of),
        resources=resources(),
    )
    outcome = await engine.execute(job, NullRecorder(), run_node)
    row["error"] = outcome.error
    return outcome.status


async def _run(execution_id: str, workflow_id: str) -> None:
    row = EXECUTIONS[execution_id]
    try:
        row["status"] = await workflow_flow(execution_id, workflow_id)
    except asyncio.CancelledError:
        row["status"] = "cancelled"
    except Exception as exc:  # noqa: BLE001 - a crashed flow is a failed execution
        row["status"], row["error"] = "failed", f"{type(exc).__name__}: {exc}"
    row["completedAt"] = time.time()


@app.get("/")
async def health() -> dict[str, str]:
    return {"status": "running"}


@app.put("/bench/workflows/{workflow_id}")
async def put_workflow(workflow_id: str, request: Request) -> dict[str, bool]:
    WORKFLOWS[workflow_id] = await request.json()
    return {"ok": True}


@app.post("/api/workflows/execute")
async def execute(request: Request) -> dict[str, Any]:
    body = await request.json()
    workflow_id = body.get("workflowId") or f"inline_{secrets.token_hex(8)}"
    if body.get("workflow") is not None:
        WORKFLOWS[workflow_id] = body["workflow"]
    execution_id = secrets.token_hex(8)
    EXECUTIONS[execution_id] = {
        "status": "pending",
        "createdAt": time.time(),
        "startedAt": None,
        "completedAt": None,
        "error": None,
    }
    job = asyncio.create_task(_run(execution_id, workflow_id))
    RUNNING.add(job)
    job.add_done_callback(RUNNING.discard)
    return {"success": True, "executionId": execution_id, "status": "pending"}


@app.get("/api/executions/{execution_id}")
async def get_execution(execution_id: str) -> dict[str, Any]:
    row = EXECUTIONS.get(execution_id)
    if row is None:
        return {"executionId": execution_id, "status": "unknown"}
    return {"executionId": execution_id, **row}


@app.post("/bench/status")
async def bulk_status(request: Request) -> dict[str, Any]:
    ids = (await request.json()).get("ids", [])
    return {i: EXECUTIONS[i] for i in ids if i in EXECUTIONS}


@app.post("/bench/cancel-all")
async def cancel_all() -> dict[str, int]:
    jobs = list(RUNNING)
    for job in jobs:
        job.cancel()
    return {"cancelled": len(jobs)}
