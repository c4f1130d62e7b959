"""The HTTP API of contract §1: thin routes over the store; the worker process runs executions."""

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import Settings, get_settings, settings_dependency
from database import IdempotencyKey, NewExecution, Store, new_execution_id, open_store
from errors import (
    Conflict,
    ExecutionNotFound,
    GraphValidationError,
    UnsupportedNodeTypes,
    WorkflowError,
    WorkflowNotFound,
)
from flows.graph import parse_workflow
from images_api import router as images_router
from jsonutil import dump_json, now_iso
from models import TERMINAL_STATUSES, ExecutionCreate, NodeDef, NodeExecute, RetryRequest
from tasks import node_types
from tasks.context import Resources, RunContext, open_resources
from tasks.run_node import run_with_retries

logger = logging.getLogger(__name__)
VERSION = "1.0.0"
IDEMPOTENCY_TTL_S = 24 * 3600


class WorkerWakeup:
    """Pings the worker processes' UDP ports (WOS_WAKE_PORTS, set by start_service.py) after a
    submit, so an idle worker starts the execution at once instead of at its next poll."""

    def __init__(self, ports: str | None) -> None:
        self.ports = [int(p) for p in (ports or "").split(",") if p.strip()]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if self.ports else None
        if self.sock is not None:
            self.sock.setblocking(False)

    def __call__(self) -> None:
        for port in self.ports:
            with contextlib.suppress(OSError):  # a worker restarting: it polls anyway
                self.sock.sendto(b"1", ("127.0.0.1", port))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    app.state.store = await open_store(settings.database_url)
    app.state.resources = open_resources(settings, app.state.store)
    app.state.wake_workers = WorkerWakeup(os.environ.get("WOS_WAKE_PORTS"))
    try:
        yield
    finally:
        app.state.wake_workers.close()
        await app.state.resources.aclose()
        await app.state.store.close()


class BodyLimit:
    """Refuse request bodies over MAX_REQUEST_BYTES with 413 before they are buffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = get_settings().MAX_REQUEST_BYTES
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")

        def too_big() -> JSONResponse:
            return JSONResponse({"detail": f"Request body larger than {limit} bytes"}, 413)

        if declared.isdigit() and int(declared) > limit:
            return await too_big()(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await too_big()(scope, receive, send)


class _TooLarge(Exception):
    pass


app = FastAPI(title="Workflow Orchestration Service", version=VERSION, lifespan=lifespan)
app.add_middleware(BodyLimit)  # type: ignore[arg-type]


def _readable(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msg = f"Malformed JSON body: {err.get('ctx', {}).get('error', msg)}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "Invalid request"


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _readable(list(exc.errors()))}, 422)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=exc.headers)


_STATUS = {WorkflowNotFound: 404, ExecutionNotFound: 404, GraphValidationError: 422, Conflict: 409}


@app.exception_handler(WorkflowError)
async def _workflow_error(_: Request, exc: WorkflowError) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse({"detail": str(exc)}, status)


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error")
    return JSONResponse({"detail": f"Internal error: {type(exc).__name__}: {exc}"}, 500)


async def require_key(
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    keys = get_settings().api_keys
    if not keys:
        return
    bearer = (
        authorization[7:].strip() if (authorization or "").lower().startswith("bearer ") else None
    )
    if bearer not in keys and x_api_key not in keys:
        raise StarletteHTTPException(
            401, "Missing or invalid API key (Authorization: Bearer <key> or X-API-Key)"
        )


# Dependencies are `async def`: FastAPI runs a plain `def` in a worker thread, one thread round
# trip per dependency per request.
async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_wake(request: Request) -> WorkerWakeup:
    wake: WorkerWakeup = request.app.state.wake_workers
    return wake


StoreDep = Annotated[Store, Depends(get_store)]
WakeDep = Annotated[WorkerWakeup, Depends(get_wake)]
SettingsDep = Annotated[Settings, Depends(settings_dependency)]
api = [Depends(require_key)]
app.include_router(images_router, dependencies=api)


@app.get("/")
async def health() -> dict[str, Any]:
    return {
        "service": "Workflow Orchestration Service",
        "status": "running",
        "version": VERSION,
        "timestamp": now_iso(),
    }


def _definition(raw: Any) -> str:
    """Validate a workflow definition and return it as stored for the run (refuses Decision 3).
    A stored workflow's text is validated once while it stays unchanged (LRU)."""
    if isinstance(raw, str) and len(raw) <= DEFINITION_CACHE_MAX_BYTES:
        return _definition_of_text(raw)
    return _validated(raw)


DEFINITION_CACHE_MAX_BYTES = 64 * 1024


@functools.lru_cache(maxsize=256)
def _definition_of_text(raw: str) -> str:
    return _validated(raw)


def _validated(raw: Any) -> str:
    workflow = parse_workflow(raw)
    known = set(node_types())
    unsupported = [n for n in workflow.nodes if n.type not in known]
    if unsupported:
        listing = ", ".join(f"{n.type} (node {n.id})" for n in unsupported)
        raise UnsupportedNodeTypes(f"Unsupported node types: {listing}")
    return workflow.model_dump_json(exclude_none=True)


async def queue(
    store: Store,
    wake: Callable[[], None],
    *,
    workflow_id: str,
    name: str | None,
    definition: str,
    body: ExecutionCreate,
    mode: str,
    idempotency_key: str | None = None,
    retry_of: str | None = None,
    node_results: str | None = None,
) -> dict[str, Any]:
    """Insert the pending row (the worker process picks it up) and answer like PY-API."""
    execution_id = new_execution_id()
    response = {
        "success": True,
        "executionId": execution_id,
        "status": "pending",
        "message": "Workflow execution started in background",
        "workflowId": workflow_id,
        "workflowName": name,
    }
    key = None
    if idempotency_key:
        digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        key = IdempotencyKey(idempotency_key, digest, IDEMPOTENCY_TTL_S)
    new = NewExecution(
        execution_id=execution_id,
        workflow_id=workflow_id,
        workflow_name=name,
        organization_id=body.organizationId,
        inputs=body.inputs or {},
        definition=definition,
        mode=mode,
        retry_of=retry_of,
        node_results=node_results,
    )
    for attempt in range(2):
        try:
            earlier = await store.create_execution(new, idempotency=key)
            break
        except IntegrityError:  # a concurrent submit with the same key won the race
            if attempt or key is None:
                raise
    if earlier is None:
        wake()
        return response
    earlier_id, earlier_hash = earlier
    if key is not None and earlier_hash != key.request_hash:
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} was already used with a different request body"
        )
    row = await store.get_execution(earlier_id)
    return {
        **response,
        "executionId": earlier_id,
        "status": row["status"] if row else "pending",
        "message": "Execution already submitted with this Idempotency-Key",
    }


@app.post("/api/workflows/execute", dependencies=api)
async def execute_workflow(
    body: ExecutionCreate,
    store: StoreDep,
    settings: SettingsDep,
    wake: WakeDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    name: str | None = None
    if body.workflow is not None:
        workflow_id = body.workflowId or f"inline_{new_execution_id()}"
        raw: Any = body.workflow
    elif body.workflowId:
        workflow_id = body.workflowId
        row = await store.get_workflow(workflow_id)
        if row is None:
            raise WorkflowNotFound(f"Workflow {workflow_id} not found")
        name, raw = row["name"], row["data"]
    else:
        raise GraphValidationError("workflowId is required (or send an inline 'workflow')")
    mode = body.mode if body.mode in ("prefect", "inline") else settings.EXECUTION_MODE
    return await queue(
        store,
        wake,
        workflow_id=workflow_id,
        name=name,
        definition=_definition(raw),
        body=body,
        mode=mode,
        idempotency_key=idempotency_key,
    )


@app.post("/api/executions/{execution_id}/retry", dependencies=api)
async def retry_execution(
    execution_id: str, store: StoreDep, wake: WakeDep, body: RetryRequest | None = None
) -> dict[str, Any]:
    """A new execution of a failed/cancelled one, with the same definition and inputs, reusing
    the results of the nodes that completed (unless `fromScratch`)."""
    row = await store.get_execution(execution_id)
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    if row["status"] not in ("failed", "cancelled"):
        raise Conflict(
            f"Only failed or cancelled executions can be retried; execution "
            f"{execution_id} is {row['status']}"
        )
    if row.get("definition") is None:
        raise Conflict(
            f"Execution {execution_id} was not run by this service and cannot be retried"
        )
    reused = None
    results = _parsed(row["nodeResults"])
    if not (body and body.fromScratch) and isinstance(results, dict):
        kept = {
            nid: {**r, "reusedFrom": execution_id}
            for nid, r in results.items()
            if isinstance(r, dict) and r.get("success") is True and not r.get("skipped")
        }
        reused = dump_json(kept) if kept else None
    inputs = _parsed(row["inputs"])
    request = ExecutionCreate(
        workflowId=row["workflowId"],
        organizationId=row["organizationId"],
        inputs=inputs if isinstance(inputs, dict) else {},
    )
    response = await queue(
        store,
        wake,
        workflow_id=row["workflowId"],
        name=row.get("workflowName"),
        definition=row["definition"],
        body=request,
        mode=row["requestedMode"],
        retry_of=execution_id,
        node_results=reused,
    )
    return {**response, "message": "Retry started in background", "retryOf": execution_id}


def _parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _progress(store: Store, row: dict[str, Any]) -> dict[str, int]:
    settled = row["status"] in TERMINAL_STATUSES
    if row.get("totalNodes") is not None:
        total, done = row["totalNodes"], row["completedNodes"]
        failed, skipped = row["failedNodes"], row["skippedNodes"]
    else:  # a row the Node backend wrote, or not started yet
        counts = await store.log_counts(row["id"])
        done, failed = counts.get("completed", 0), counts.get("error", 0)
        skipped = counts.get("skipped", 0)
        total = max(counts.get("running", 0), done + failed) + skipped
    finished = done + failed + skipped
    percentage = 100 if (settled and total == 0) else (finished * 100 // total if total else 0)
    return {
        "totalNodes": total,
        "completedNodes": done,
        "failedNodes": failed,
        "skippedNodes": skipped,
        "percentage": min(percentage, 100),
    }


@app.get("/api/executions/{execution_id}", dependencies=api)
async def get_execution(execution_id: str, store: StoreDep) -> dict[str, Any]:
    row = await store.get_execution(execution_id)
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    return {
        "executionId": row["id"],
        "workflowId": row["workflowId"],
        "workflowName": row.get("workflowName"),
        "organizationId": row["organizationId"],
        "status": row["status"],
        "createdAt": row["createdAt"],
        "startedAt": row["startedAt"],
        "completedAt": row["completedAt"],
        "currentNodeId": row["currentNodeId"],
        "error": row["error"],
        "progress": await _progress(store, row),
        "logs": await store.get_logs(execution_id, last=10),
        "inputs": _parsed(row["inputs"]),
        "nodeResults": _parsed(row["nodeResults"]),
        "finalOutput": _parsed(row["finalOutput"]),
        "mode": row.get("mode"),
        "modeReason": row.get("modeReason"),
        "attempts": row.get("attempts"),
        "resumedAt": row.get("resumedAt"),
        "retryOf": row.get("retryOf"),
        "flowRunId": row.get("flowRunId"),
    }


@app.get("/api/executions/{execution_id}/logs", dependencies=api)
async def get_execution_logs(execution_id: str, store: StoreDep) -> dict[str, Any]:
    rows = await store.get_logs(execution_id)
    if not rows and await store.get_execution(execution_id) is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    return {"executionId": execution_id, "logs": rows}


@app.post("/api/executions/{execution_id}/cancel", dependencies=api)
async def cancel_execution(execution_id: str, store: StoreDep) -> dict[str, Any]:
    previous, cancelled = await store.cancel(execution_id)
    if previous is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    if not cancelled:
        return {
            "success": False,
            "executionId": execution_id,
            "message": f"Cannot cancel execution with status '{previous}'",
            "previousStatus": previous,
        }
    return {
        "success": True,
        "executionId": execution_id,
        "message": "Execution cancelled successfully",
        "previousStatus": previous,
    }


@app.post("/api/nodes/execute", dependencies=api)
async def execute_node(body: NodeExecute, request: Request) -> dict[str, Any]:
    """Run one node synchronously (debug); nothing is written to the store."""
    resources: Resources = request.app.state.resources
    try:
        node = NodeDef.model_validate({**body.node, "id": body.nodeId, "type": body.nodeType})
        ctx = RunContext(
            execution_id="single_node",
            workflow_id=body.workflowId,
            organization_id=None,
            inputs={},
            node_id=node.id,
            node_type=node.type,
            node_label=node.display_label,
            resources=resources,
        )
        output = await run_with_retries(node, body.inputData, ctx)
    except Exception as exc:  # noqa: BLE001 - answered as success:false, like the original
        return {
            "success": False,
            "nodeId": body.nodeId,
            "nodeType": body.nodeType,
            "error": str(exc),
            "message": "Node execution failed",
        }
    return {
        "success": True,
        "nodeId": body.nodeId,
        "nodeType": body.nodeType,
        "output": json.loads(dump_json(output)),
        "message": "Node executed successfully",
    }


@app.get("/api/workflows/{workflow_id}/executions", dependencies=api)
async def list_workflow_executions(
    workflow_id: str,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    workflow = await store.get_workflow(workflow_id)
    if workflow is None:
        raise WorkflowNotFound(f"Workflow {workflow_id} not found")
    rows, total = await store.list_executions(workflow_id, limit)
    return {
        "workflowId": workflow_id,
        "workflowName": workflow["name"],
        "executions": rows,
        "total": total,
    }
