"""`/api/executions…`: the status view, logs, cancel and retry of one execution."""

from fastapi import APIRouter, Response

from api import executions
from api.deps import API_KEY, CallerDep, StoreDep, WakeupDep
from api.schemas import (
    API_ERRORS,
    CancelResult,
    ExecutionLogs,
    ExecutionPublic,
    RetryRequest,
    RetrySubmitted,
    error_responses,
)

router = APIRouter(
    prefix="/api/executions", tags=["executions"], dependencies=[API_KEY], responses=API_ERRORS
)


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


@router.post("/{execution_id}/cancel", response_model=CancelResult, responses=error_responses(404))
async def cancel_execution(execution_id: str, store: StoreDep, caller: CallerDep) -> CancelResult:
    """No body needed; an execution that already ended is answered 200 `success: false`."""
    return await executions.cancel(store, execution_id, caller.organization)


@router.post(
    "/{execution_id}/retry", response_model=RetrySubmitted, responses=error_responses(404, 409)
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
        store, wake, execution_id, from_scratch=from_scratch, organization=caller.organization
    )
