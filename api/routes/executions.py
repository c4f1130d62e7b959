"""`/api/executions…`: the status view, logs, cancel and retry of one execution."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.exceptions import HTTPException

from api import executions, listing
from api.deps import API_KEY, CallerDep, StoreDep, WakeupDep
from api.json_body import JsonBodyRoute
from api.schemas import (
    API_ERRORS,
    CancelResult,
    ExecutionGraph,
    ExecutionLogs,
    ExecutionPublic,
    ExecutionsPage,
    RetryRequest,
    RetrySubmitted,
    error_responses,
)
from states import ExecutionStatus

router = APIRouter(
    prefix="/api/executions",
    tags=["executions"],
    dependencies=[API_KEY],
    responses=API_ERRORS,
    route_class=JsonBodyRoute,
)


@router.get("", response_model=ExecutionsPage)
async def list_executions(
    store: StoreDep,
    caller: CallerDep,
    status: ExecutionStatus | None = None,
    workflow_id: Annotated[str | None, Query(alias="workflowId", max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(max_length=2000)] = None,
) -> ExecutionsPage:
    """Executions of every workflow (an organization key's: its org's only), newest first,
    `limit` at a time; `before` is the previous page's `nextCursor`."""
    try:
        return await listing.executions_page(
            store,
            limit=limit,
            status=status,
            workflow_id=workflow_id or None,
            before=before,
            organization=caller.organization,
        )
    except listing.InvalidCursor as exc:
        raise HTTPException(422, str(exc)) from exc


@router.get("/{execution_id}", response_model=ExecutionPublic, responses=error_responses(404))
async def get_execution(
    execution_id: str, store: StoreDep, caller: CallerDep
) -> ExecutionPublic | Response:
    """Big stored JSON columns are copied into the body as they are (`spliced_json`)."""
    raw: dict[str, str] = {}
    public = await executions.execution_public(store, execution_id, caller.organization, raw)
    if not raw:
        return public
    return Response(executions.spliced_json(public, raw), media_type="application/json")


@router.get("/{execution_id}/logs", response_model=ExecutionLogs, responses=error_responses(404))
async def get_execution_logs(
    execution_id: str, store: StoreDep, caller: CallerDep
) -> ExecutionLogs:
    return await executions.execution_logs(store, execution_id, caller.organization)


@router.get(
    "/{execution_id}/workflow", response_model=ExecutionGraph, responses=error_responses(404)
)
async def get_execution_workflow(
    execution_id: str, store: StoreDep, caller: CallerDep
) -> ExecutionGraph:
    """The nodes and connections the execution runs (without node configs)."""
    return await listing.execution_graph(store, execution_id, caller.organization)


@router.post("/{execution_id}/cancel", response_model=CancelResult, responses=error_responses(404))
async def cancel_execution(execution_id: str, store: StoreDep, caller: CallerDep) -> CancelResult:
    """No body needed; an execution that already ended is answered 200 `success: false`."""
    return await executions.cancel(store, execution_id, caller.organization)


@router.post(
    "/{execution_id}/retry",
    response_model=RetrySubmitted,
    responses=error_responses(400, 404, 409),
)
async def retry_execution(
    execution_id: str,
    store: StoreDep,
    wake: WakeupDep,
    caller: CallerDep,
    body: RetryRequest | None = None,
) -> RetrySubmitted:
    """A new execution of a failed/cancelled one, with the same definition and inputs, reusing
    the results of the nodes that completed (unless `fromScratch`)."""
    from_scratch = body is not None and body.fromScratch
    return await executions.retry(
        store,
        wake,
        execution_id,
        from_scratch=from_scratch,
        organization=caller.organization,
        callback=body.callback if body is not None else None,
        priority=body.priority if body is not None else None,
    )
