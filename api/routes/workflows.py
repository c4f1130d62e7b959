"""`/api/workflows…`: submit an execution of a workflow, list a workflow's executions."""

from typing import Annotated

from fastapi import APIRouter, Header, Query

from api import executions
from api.deps import API_KEY, CallerDep, SettingsDep, StoreDep, WakeupDep
from api.json_body import JsonBodyRoute
from api.rate_limits import SubmitLimitsDep, check_submit
from api.schemas import (
    API_ERRORS,
    ExecutionCreate,
    ExecutionSubmitted,
    WorkflowExecutions,
    error_responses,
)
from states import ExecutionMode

router = APIRouter(
    prefix="/api/workflows",
    tags=["workflows"],
    dependencies=[API_KEY],
    responses=API_ERRORS,
    route_class=JsonBodyRoute,
)


@router.post(
    "/execute",
    response_model=ExecutionSubmitted,
    responses=error_responses(400, 403, 404, 409, 429),
)
async def execute_workflow(
    body: ExecutionCreate,
    store: StoreDep,
    settings: SettingsDep,
    wake: WakeupDep,
    caller: CallerDep,
    limits: SubmitLimitsDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> ExecutionSubmitted:
    """Queue a run of the stored workflow `workflowId` (or of an inline `workflow`) and answer
    at once; a worker runs it. 422 for unsupported node types (nothing is queued); 403 when an
    organization key's body names another organization; 429 over RATE_LIMITS."""
    caller.check_body_org(body.organizationId)
    await check_submit(limits, caller, body.organizationId)
    return await executions.submit(
        store,
        wake,
        body,
        default_mode=ExecutionMode(settings.EXECUTION_MODE),
        idempotency_key=idempotency_key,
        key_organization=caller.organization,
    )


@router.get(
    "/{workflow_id}/executions", response_model=WorkflowExecutions, responses=error_responses(404)
)
async def list_workflow_executions(
    workflow_id: str,
    store: StoreDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> WorkflowExecutions:
    """The workflow's executions, newest first (an organization key's: its org's only)."""
    return await executions.workflow_executions(store, workflow_id, limit, caller.organization)
