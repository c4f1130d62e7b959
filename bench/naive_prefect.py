"""Baseline 3: the naive Prefect design the original service used, rebuilt for comparison.

One async `@flow` per execution, one `@task` per node (Prefect's defaults: default cache policy,
default logging), awaited in the API process's event loop (`asyncio.create_task` right after
the POST answers, like FastAPI's BackgroundTasks), nodes walked one after another in
topological order. The node handlers are the service's own (`tasks.run_node.run_attempt`), so
only the orchestration differs. Status lives in memory (no database writes at all: this
flatters the baseline).

Run by the bench: `uvicorn bench.naive_prefect:app` with PREFECT_API_URL pointing at an
embedded server started with `python -m flows.prefect_server`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from prefect import flow, task

import tasks  # noqa: F401  (registers every node type)
from config import get_settings
from errors import NodeError
from flows.graph import assemble_input, build_plan, edge_payload, parse_workflow
from models import NodeDef
from tasks.context import RunContext, open_resources
from tasks.run_node import run_attempt

app = FastAPI(title="naive Prefect baseline")
WORKFLOWS: dict[str, Any] = {}
EXECUTIONS: dict[str, dict[str, Any]] = {}
RUNNING: set[asyncio.Task[None]] = set()
_resources: Any = None


def resources() -> Any:
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


@flow(name="naive-workflow")
async def workflow_flow(execution_id: str, workflow_id: str) -> str:
    row = EXECUTIONS[execution_id]
    row["status"], row["startedAt"] = "running", time.time()
    plan = build_plan(parse_workflow(WORKFLOWS[workflow_id]))
    active: dict[str, list[Any]] = {nid: [] for nid in plan.nodes}
    failed = []
    for nid in plan.order:
        node = plan.nodes[nid]
        run, data, _ = assemble_input(node, active[nid], bool(plan.incoming[nid]), {})
        if not run:
            result: dict[str, Any] = {"success": True, "skipped": True}
        else:
            row["currentNodeId"] = nid
            try:
                result = await node_task(node.model_dump(), data, execution_id)
            except NodeError as exc:
                result = {"success": False, "error": str(exc)}
                failed.append(nid)
                row["error"] = row.get("error") or f"node {nid}: {exc}"
        for edge in plan.outgoing[nid]:
            live, payload = edge_payload(edge, node, result)
            if live:
                active[edge.toNodeId].append((edge, payload))
    return "failed" if failed else "completed"


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
