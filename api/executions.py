"""What the API does with executions, as plain functions over `ApiStore`: submit (with
idempotency), retry (the reuse rule), the status view with its progress arithmetic, the logs,
cancel and a workflow's history. A route calls one of them and returns its answer; errors are
`errors.WorkflowError`s, which the app maps to HTTP. Unit tests call them with any store."""

import functools
import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from pydantic_core import PydanticSerializationError

from api import versions
from api.callbacks import callbacks_public, stored_callback
from api.schemas import (
    CallbackCreate,
    CancelResult,
    ExecutionCreate,
    ExecutionLogRow,
    ExecutionLogs,
    ExecutionProgress,
    ExecutionPublic,
    ExecutionSubmitted,
    ExecutionSummary,
    RetrySubmitted,
    WorkflowExecutions,
)
from config import get_settings
from database.claim_order import PRIORITIES, priority_name
from database.ids import new_execution_id
from database.interfaces import ApiStore, IdempotencyKey, NewExecution, Row
from errors import (
    Conflict,
    DuplicateExecution,
    ExecutionNotFound,
    GraphValidationError,
    UnsupportedNodeTypes,
    WorkflowNotFound,
)
from flows.graph import check_size, parse_workflow
from jsonutil import dump_json, load_json_column
from metrics import execution_submitted
from states import (
    RETRYABLE_STATUSES,
    TERMINAL_STATUSES,
    ExecutionMode,
    ExecutionStatus,
    NodeStatus,
)
from tasks import node_types
from tasks.run_node import check_node_limits

logger = logging.getLogger(__name__)

Wakeup = Callable[[], None]
"""Tells the workers that something was queued (`api.wakeup.WorkerWakeup`)."""

IDEMPOTENCY_TTL_S = 24 * 3600
DEFINITION_CACHE_MAX_BYTES = 64 * 1024
STATUS_LOG_ROWS = 10


async def submit(
    store: ApiStore,
    wake: Wakeup,
    body: ExecutionCreate,
    *,
    default_mode: ExecutionMode,
    idempotency_key: str | None = None,
    key_organization: str | None = None,
) -> ExecutionSubmitted:
    """Validate the stored or inline definition and queue a pending execution of it. With an
    `idempotency_key`, an earlier submit of the same key and organization within 24 h is
    answered instead (Conflict if its body differed). Raises WorkflowNotFound and
    GraphValidationError (nothing is queued then).

    `key_organization` is an organization key's org (the caller checked that the body names no
    other): the execution's org. A stored workflow runs only as its own org: another org
    (given, or the key's) is WorkflowNotFound; with none given the row keeps null and the data
    nodes act for the workflow's org. A workflow without org runs as the execution's."""
    name: str | None = None
    organization_id = key_organization or body.organizationId
    data_organization_id = organization_id
    version: int | None = None
    if body.workflow is not None:
        if body.version not in (None, "draft"):
            raise GraphValidationError("version applies to a stored workflow, not an inline one")
        workflow_id = body.workflowId or f"inline_{new_execution_id()}"
        raw: Any = body.workflow
    elif body.workflowId:
        workflow_id = body.workflowId
        row = await store.get_workflow(workflow_id, key_organization)
        owner = None if row is None else row["organizationId"]
        if row is None or organization_id not in (None, owner or organization_id):
            raise WorkflowNotFound(f"Workflow {workflow_id} not found")
        chosen = await versions.resolve(store, row, body.version, body.inputs)
        name, raw, version = row["name"], chosen.raw, chosen.version
        data_organization_id = owner or organization_id
    else:
        raise GraphValidationError("workflowId is required (or send an inline 'workflow')")
    key = None
    if idempotency_key:
        digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        key = IdempotencyKey(idempotency_key, digest, IDEMPOTENCY_TTL_S)
    new = NewExecution(
        execution_id=new_execution_id(),
        workflow_id=workflow_id,
        workflow_name=name,
        organization_id=organization_id,
        inputs=body.inputs or {},
        definition=validated_definition(raw),
        mode=(body.mode or default_mode).value,
        data_organization_id=data_organization_id,
        callback=stored_callback(body.callback),
        priority=PRIORITIES[body.priority],
        workflow_version=version,
        workflow_hash=await versions.definition_hash(raw),
    )
    return await _queue(store, wake, new, key)


async def retry(
    store: ApiStore,
    wake: Wakeup,
    execution_id: str,
    *,
    from_scratch: bool = False,
    organization: str | None = None,
    callback: CallbackCreate | None = None,
    priority: str | None = None,
) -> RetrySubmitted:
    """Queue a new execution of a failed or cancelled one, with the same definition, inputs,
    requested mode and organizations, adopting the results of the nodes that completed
    (`reusable_results`) unless `from_scratch`. Raises ExecutionNotFound (also for an execution
    of another org than an organization key's `organization`), or Conflict for other statuses
    and for executions this service did not run. The retry keeps the execution's callback and
    priority unless `callback` or `priority` replaces them."""
    row = await store.get_execution(execution_id, organization)
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    if row["status"] not in RETRYABLE_STATUSES:
        raise Conflict(
            f"Only failed or cancelled executions can be retried; execution "
            f"{execution_id} is {row['status']}"
        )
    if row.get("definition") is None:
        raise Conflict(
            f"Execution {execution_id} was not run by this service and cannot be retried"
        )
    inputs = load_json_column(row["inputs"])
    new = NewExecution(
        execution_id=new_execution_id(),
        workflow_id=row["workflowId"],
        workflow_name=row.get("workflowName"),
        organization_id=row["organizationId"],
        inputs=inputs if isinstance(inputs, dict) else {},
        definition=row["definition"],
        mode=row["requestedMode"],
        retry_of=execution_id,
        node_results=None if from_scratch else reusable_results(row["nodeResults"], execution_id),
        data_organization_id=row.get("dataOrganizationId") or row["organizationId"],
        callback=stored_callback(callback) if callback is not None else row.get("callback"),
        priority=PRIORITIES[priority] if priority else row["priority"],
        workflow_version=row.get("workflowVersion"),
        workflow_hash=row.get("workflowHash"),
    )
    queued = await _queue(store, wake, new, None)
    return RetrySubmitted(
        **{**queued.model_dump(), "message": "Retry started in background"},
        retryOf=execution_id,
    )


def reusable_results(node_results: str | None, execution_id: str) -> str | None:
    """The reuse rule of a retry: the stored results of the nodes that completed (success, not
    skipped), each marked `reusedFrom`; None when there are none."""
    results = load_json_column(node_results)
    if not isinstance(results, dict):
        return None
    kept = {
        node_id: {**result, "reusedFrom": execution_id}
        for node_id, result in results.items()
        if isinstance(result, dict) and result.get("success") is True and not result.get("skipped")
    }
    return dump_json(kept) if kept else None


async def _queue(
    store: ApiStore, wake: Wakeup, new: NewExecution, key: IdempotencyKey | None
) -> ExecutionSubmitted:
    """Insert the pending row (a worker picks it up) and answer like PY-API."""
    try:
        earlier = await store.create_execution(new, idempotency=key)
    except DuplicateExecution:
        if key is None:
            raise
        # A concurrent submit with the same key won the race: its row is found this time.
        earlier = await store.create_execution(new, idempotency=key)
    answer = ExecutionSubmitted(
        success=True,
        executionId=new.execution_id,
        status=ExecutionStatus.PENDING,
        message="Workflow execution started in background",
        workflowId=new.workflow_id,
        workflowName=new.workflow_name,
    )
    if earlier is None:
        wake()
        execution_submitted(new.mode)
        return answer
    earlier_id, earlier_hash = earlier
    if key is not None and earlier_hash != key.request_hash:
        raise Conflict(
            f"Idempotency-Key {key.key!r} was already used with a different request body"
        )
    row = await store.get_execution(earlier_id)
    return answer.model_copy(
        update={
            "executionId": earlier_id,
            "status": row["status"] if row else ExecutionStatus.PENDING,
            "message": "Execution already submitted with this Idempotency-Key",
        }
    )


def validated_definition(raw: Any) -> str:
    """Validate a workflow definition (dict or JSON text) and return it as stored for the run;
    refuses node types this service does not implement (Decision 3) and workflows over the
    limits (nodes, connections, per-node retries/retryDelayMs/timeoutMs). A stored workflow's
    text is validated once while it and the limits stay unchanged (LRU): the submit path reads
    it every time."""
    settings = get_settings()
    limits = settings.MAX_WORKFLOW_NODES, settings.MAX_WORKFLOW_CONNECTIONS
    if isinstance(raw, str) and len(raw) <= DEFINITION_CACHE_MAX_BYTES:
        return _definition_of_text(raw, limits)
    return _validated(raw, limits)


@functools.lru_cache(maxsize=256)
def _definition_of_text(raw: str, limits: tuple[int, int]) -> str:
    return _validated(raw, limits)


def _validated(raw: Any, limits: tuple[int, int]) -> str:
    workflow = parse_workflow(raw)
    check_size(workflow, max_nodes=limits[0], max_connections=limits[1])
    for n in workflow.nodes:
        check_node_limits(n.config, f"Node {n.id}: ")
    known = set(node_types())
    unsupported = [n for n in workflow.nodes if n.type not in known]
    if unsupported:
        listing = ", ".join(f"{n.type} (node {n.id})" for n in unsupported)
        raise UnsupportedNodeTypes(f"Unsupported node types: {listing}")
    try:
        return workflow.model_dump_json(exclude_none=True)
    except PydanticSerializationError:  # a lone surrogate (\\ud800) has no UTF-8 form
        raise GraphValidationError(
            "Workflow definition holds text that is not valid Unicode (a lone surrogate)"
        ) from None


RAW_COLUMN_MIN_CHARS = 64 * 1024
"""A stored JSON column at least this long goes into the status view as stored (`raw`)."""


def _column(text: str | None, raw: dict[str, str] | None) -> Any:
    """A JSON column decoded; with `raw`, a big one is a token instead, its text kept in `raw`
    for `spliced_json`."""
    if raw is None or text is None or len(text) < RAW_COLUMN_MIN_CHARS:
        return load_json_column(text)
    token = f"wos-raw-column-{secrets.token_hex(16)}"
    raw[token] = text
    return token


def spliced_json(public: ExecutionPublic, raw: dict[str, str]) -> bytes:
    """`public` as JSON with each token of `raw` replaced by its stored column: megabytes of
    nodeResults are copied into a status poll, not decoded and encoded again on the API's loop
    (issue 9: `GET /` answers within 1 s while executions with big results are polled)."""
    parts = [public.model_dump_json()]
    for token, text in raw.items():
        head, tail = parts[-1].split(f'"{token}"', 1)
        parts[-1:] = [head, text, tail]
    return "".join(parts).encode()


async def execution_public(
    store: ApiStore,
    execution_id: str,
    organization: str | None = None,
    raw: dict[str, str] | None = None,
) -> ExecutionPublic:
    """The status view: the row with its JSON columns decoded, progress and the last logs.
    `organization` (an organization key's) makes another org's execution unknown. With `raw`,
    the big JSON columns are left to `spliced_json` (see `_column`)."""
    row = await store.get_execution(execution_id, organization)
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    logs = await store.get_logs(execution_id, last=STATUS_LOG_ROWS)
    return ExecutionPublic(
        executionId=row["id"],
        workflowId=row["workflowId"],
        workflowName=row.get("workflowName"),
        organizationId=row["organizationId"],
        status=row["status"],
        createdAt=row["createdAt"],
        startedAt=row["startedAt"],
        completedAt=row["completedAt"],
        currentNodeId=row["currentNodeId"],
        error=row["error"],
        progress=await progress(store, row),
        logs=[ExecutionLogRow.model_validate(log) for log in logs],
        inputs=_column(row["inputs"], raw),
        nodeResults=_column(row["nodeResults"], raw),
        finalOutput=_column(row["finalOutput"], raw),
        mode=row.get("mode"),
        modeReason=row.get("modeReason"),
        attempts=row.get("attempts"),
        resumedAt=row.get("resumedAt"),
        retryOf=row.get("retryOf"),
        priority=None if row.get("priority") is None else priority_name(row["priority"]),
        flowRunId=row.get("flowRunId"),
        prefectUrl=prefect_url(row),
        callbacks=await callbacks_public(store, row),
        workflowVersion=row.get("workflowVersion"),
        workflowHash=row.get("workflowHash"),
    )


def prefect_url(row: Row) -> str | None:
    """The execution's (last) flow run's page in the Prefect UI (PREFECT_UI_URL, see
    `Settings.prefect_ui_url`); None when it did not run in Prefect."""
    flow_run_id = row.get("flowRunId")
    if not flow_run_id or row.get("mode") != ExecutionMode.PREFECT:
        return None
    return f"{get_settings().prefect_ui_url}/runs/flow-run/{flow_run_id}"


async def progress(store: ApiStore, row: Row) -> ExecutionProgress:
    """Progress of an execution row: the service's own counters when it ran the execution,
    else counted from the log rows (a row the Node backend wrote, or one not started yet)."""
    if row.get("totalNodes") is not None:
        total, done = row["totalNodes"], row["completedNodes"]
        failed, skipped = row["failedNodes"], row["skippedNodes"]
    else:
        counts = await store.log_counts(row["id"])
        done, failed = counts.get(NodeStatus.COMPLETED, 0), counts.get(NodeStatus.ERROR, 0)
        skipped = counts.get(NodeStatus.SKIPPED, 0)
        total = max(counts.get(NodeStatus.RUNNING, 0), done + failed) + skipped
    return progress_of(
        settled=row["status"] in TERMINAL_STATUSES,
        total=total,
        completed=done,
        failed=failed,
        skipped=skipped,
    )


def progress_of(
    *, settled: bool, total: int, completed: int, failed: int, skipped: int
) -> ExecutionProgress:
    """The RULE of contract §5.3: settled nodes over all nodes, rounded down, capped at 100;
    a settled execution without nodes is at 100 (Decision 6)."""
    finished = completed + failed + skipped
    percentage = 100 if (settled and total == 0) else (finished * 100 // total if total else 0)
    return ExecutionProgress(
        totalNodes=total,
        completedNodes=completed,
        failedNodes=failed,
        skippedNodes=skipped,
        percentage=min(percentage, 100),
    )


async def execution_logs(
    store: ApiStore, execution_id: str, organization: str | None = None
) -> ExecutionLogs:
    """Every log row, oldest first; ExecutionNotFound only when there are neither logs nor row
    (with an organization key's `organization`: unless the row is of that org)."""
    rows = await store.get_logs(execution_id, organization=organization)
    if not rows and await store.get_execution(execution_id, organization) is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    return ExecutionLogs(
        executionId=execution_id, logs=[ExecutionLogRow.model_validate(r) for r in rows]
    )


async def cancel(
    store: ApiStore, execution_id: str, organization: str | None = None
) -> CancelResult:
    """Cancel a pending or running execution; an ended one is answered `success: false`."""
    previous, cancelled = await store.cancel(execution_id, organization)
    if previous is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    message = (
        "Execution cancelled successfully"
        if cancelled
        else f"Cannot cancel execution with status '{previous}'"
    )
    return CancelResult(
        success=cancelled, executionId=execution_id, message=message, previousStatus=previous
    )


async def workflow_executions(
    store: ApiStore, workflow_id: str, limit: int, organization: str | None = None
) -> WorkflowExecutions:
    """The newest `limit` executions of a stored workflow (of an organization key's
    `organization` only); raises WorkflowNotFound."""
    workflow = await store.get_workflow(workflow_id, organization)
    if workflow is None:
        raise WorkflowNotFound(f"Workflow {workflow_id} not found")
    rows, total = await store.list_executions(workflow_id, limit, organization)
    return WorkflowExecutions(
        workflowId=workflow_id,
        workflowName=workflow["name"],
        executions=[ExecutionSummary.model_validate(r) for r in rows],
        total=total,
    )
