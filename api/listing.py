"""What the dashboard reads besides the status view: the executions of every workflow a page at a
time (with opaque cursors), and the graph an execution runs. Plain functions over `ApiStore`."""

import base64
import binascii
import json

from api.schemas import (
    ActiveCounts,
    ExecutionGraph,
    ExecutionListed,
    ExecutionsPage,
    GraphConnection,
    GraphNode,
)
from database.interfaces import ApiStore, ExecutionQuery
from errors import ExecutionNotFound
from models import WorkflowDef


class InvalidCursor(ValueError):
    """A `before` this service did not hand out."""


def encode_cursor(created_at: str | None, execution_id: str) -> str:
    """The `nextCursor` after a row: its place in the list order, opaque to clients."""
    raw = json.dumps([created_at, execution_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str | None, str]:
    """The (createdAt, id) of `encode_cursor`; raises InvalidCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("before: not a cursor this service handed out") from exc
    match value:
        case [str() | None as created_at, str() as execution_id]:
            return created_at, execution_id
    raise InvalidCursor("before: not a cursor this service handed out")


async def executions_page(
    store: ApiStore,
    *,
    limit: int,
    status: str | None = None,
    workflow_id: str | None = None,
    before: str | None = None,
    organization: str | None = None,
) -> ExecutionsPage:
    """Up to `limit` executions of every workflow (of an organization key's `organization`
    only), newest first, after the cursor `before`; raises InvalidCursor."""
    query = ExecutionQuery(
        limit=limit + 1,  # one more tells whether an older page exists
        status=status,
        workflow_id=workflow_id,
        before=decode_cursor(before) if before is not None else None,
        organization=organization,
    )
    rows, counts = await store.list_all_executions(query)
    page = rows[:limit]
    more = len(rows) > limit
    return ExecutionsPage(
        executions=[ExecutionListed.model_validate({**r, "executionId": r["id"]}) for r in page],
        counts=ActiveCounts.model_validate(counts),
        nextCursor=encode_cursor(page[-1]["createdAt"], page[-1]["id"]) if more else None,
    )


async def execution_graph(
    store: ApiStore, execution_id: str, organization: str | None = None
) -> ExecutionGraph:
    """The nodes (id, type, label) and connections of the definition the execution runs.
    Raises ExecutionNotFound, also for an execution this service did not run (no definition)."""
    row = await store.get_execution(execution_id, organization)
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    if row.get("definition") is None:
        raise ExecutionNotFound(
            f"Execution {execution_id} was not run by this service: its workflow is not stored"
        )
    workflow = WorkflowDef.model_validate_json(row["definition"])
    ids = {n.id for n in workflow.nodes}
    return ExecutionGraph(
        executionId=execution_id,
        workflowId=row["workflowId"],
        workflowName=row.get("workflowName"),
        nodes=[GraphNode(id=n.id, type=n.type, label=n.display_label) for n in workflow.nodes],
        connections=[
            GraphConnection(
                fromNodeId=c.fromNodeId, toNodeId=c.toNodeId, branch=c.branch, inputPort=c.inputPort
            )
            for c in workflow.connections
            if c.fromNodeId in ids and c.toNodeId in ids
        ],
    )
