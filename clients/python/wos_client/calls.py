"""Each API operation as a `Call`: the request to send and how to read its answer. `Client` and
`AsyncClient` only send them, so the two cannot disagree about the API."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

from pydantic import TypeAdapter

from wos_client.models import (
    CallbackCreate,
    CancelResult,
    ExecutionCreate,
    ExecutionGraph,
    ExecutionLogs,
    ExecutionPublic,
    ExecutionsPage,
    ExecutionSubmitted,
    Health,
    NodeExecute,
    NodeRunFailed,
    NodeRunSucceeded,
    RetryRequest,
    RetrySubmitted,
    VersionDetail,
    VersionDiff,
    VersionList,
    WorkflowExecutions,
)

T = TypeVar("T")
NodeRunResult = NodeRunSucceeded | NodeRunFailed
Version = int | Literal["draft", "published"]
Priority = Literal["high", "normal", "low"]
Callback = CallbackCreate | dict[str, Any] | str
"""A `CallbackCreate`, its JSON, or only the URL (the three terminal events)."""

_NODE_RESULT: TypeAdapter[NodeRunResult] = TypeAdapter(NodeRunResult)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _body(model: Any) -> dict[str, Any]:
    body: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return body


def _callback(callback: Callback | None) -> CallbackCreate | None:
    if callback is None or isinstance(callback, CallbackCreate):
        return callback
    if isinstance(callback, str):
        return CallbackCreate(url=callback)
    return CallbackCreate.model_validate(callback)


def health() -> Call[Health]:
    return Call("GET", "/", Health.model_validate)


def execute(
    workflow_id: str | None,
    inputs: dict[str, Any] | None,
    *,
    workflow: dict[str, Any] | None,
    organization_id: str | None,
    version: Version | None,
    priority: Priority | None,
    mode: str | None,
    callback: Callback | None,
    idempotency_key: str | None,
) -> Call[ExecutionSubmitted]:
    given: dict[str, Any] = {
        "workflowId": workflow_id,
        "inputs": inputs,
        "workflow": workflow,
        "organizationId": organization_id,
        "version": version,
        "priority": priority,
        "mode": mode,
        "callback": _callback(callback),
    }
    body = ExecutionCreate(**{k: v for k, v in given.items() if v is not None})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call(
        "POST",
        "/api/workflows/execute",
        ExecutionSubmitted.model_validate,
        json=_body(body),
        headers=headers,
    )


def get(execution_id: str) -> Call[ExecutionPublic]:
    return Call("GET", f"/api/executions/{_segment(execution_id)}", ExecutionPublic.model_validate)


def logs(execution_id: str) -> Call[ExecutionLogs]:
    path = f"/api/executions/{_segment(execution_id)}/logs"
    return Call("GET", path, ExecutionLogs.model_validate)


def graph(execution_id: str) -> Call[ExecutionGraph]:
    path = f"/api/executions/{_segment(execution_id)}/workflow"
    return Call("GET", path, ExecutionGraph.model_validate)


def cancel(execution_id: str) -> Call[CancelResult]:
    path = f"/api/executions/{_segment(execution_id)}/cancel"
    return Call("POST", path, CancelResult.model_validate)


def retry(
    execution_id: str,
    *,
    from_scratch: bool,
    callback: Callback | None,
    priority: Priority | None,
) -> Call[RetrySubmitted]:
    given: dict[str, Any] = {
        "fromScratch": from_scratch or None,
        "callback": _callback(callback),
        "priority": priority,
    }
    body = RetryRequest(**{k: v for k, v in given.items() if v is not None})
    path = f"/api/executions/{_segment(execution_id)}/retry"
    return Call("POST", path, RetrySubmitted.model_validate, json=_body(body))


def run_node(
    node_id: str,
    node_type: str,
    node: dict[str, Any] | None,
    input_data: Any,
    workflow_id: str | None,
) -> Call[NodeRunResult]:
    body = NodeExecute(
        nodeId=node_id,
        nodeType=node_type,
        node=node if node is not None else {},
        inputData=input_data,
        workflowId=workflow_id,
    )
    return Call("POST", "/api/nodes/execute", _NODE_RESULT.validate_python, json=_body(body))


def history(workflow_id: str, limit: int) -> Call[WorkflowExecutions]:
    path = f"/api/workflows/{_segment(workflow_id)}/executions"
    return Call("GET", path, WorkflowExecutions.model_validate, params={"limit": limit})


def executions(
    *, status: str | None, workflow_id: str | None, limit: int, before: str | None
) -> Call[ExecutionsPage]:
    given = {"status": status, "workflowId": workflow_id, "limit": limit, "before": before}
    params = {k: v for k, v in given.items() if v is not None}
    return Call("GET", "/api/executions", ExecutionsPage.model_validate, params=params)


def versions(workflow_id: str, limit: int) -> Call[VersionList]:
    path = f"/api/workflows/{_segment(workflow_id)}/versions"
    return Call("GET", path, VersionList.model_validate, params={"limit": limit})


def version(workflow_id: str, number: int) -> Call[VersionDetail]:
    path = f"/api/workflows/{_segment(workflow_id)}/versions/{int(number)}"
    return Call("GET", path, VersionDetail.model_validate)


def diff(
    workflow_id: str, old: int | Literal["draft"], new: int | Literal["draft"]
) -> Call[VersionDiff]:
    path = f"/api/workflows/{_segment(workflow_id)}/versions/diff"
    return Call("GET", path, VersionDiff.model_validate, params={"from": old, "to": new})
