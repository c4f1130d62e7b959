"""Every request and response body of the workflow service's API, generated from its
`/openapi.json` by `clients/python/generate_models.py` (do not edit by hand: run it again).
Attribute names are the wire names; keys this version does not know are kept (`extra`)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WosModel(BaseModel):
    """Base of every model: unknown keys are kept, so a newer service never breaks a client."""

    model_config = ConfigDict(extra="allow")


class ActiveCounts(WosModel):
    pending: int
    running: int


class CallbackCreate(WosModel):
    url: str
    events: list[str] | None = Field(
        default_factory=lambda: ["execution.completed", "execution.failed", "execution.cancelled"]
    )


class CallbackPublic(WosModel):
    webhookId: str
    url: str
    event: str
    status: str
    attempts: int
    nextAttemptAt: str | None
    lastError: str | None
    deliveredAt: str | None


class CancelResult(WosModel):
    success: bool
    executionId: str
    message: str
    previousStatus: str | None


class Check(WosModel):
    ok: bool
    detail: str


class ConnectionsDiff(WosModel):
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]


class ErrorDetail(WosModel):
    detail: str


class ExecutionListed(WosModel):
    executionId: str
    workflowId: str
    workflowName: str | None
    organizationId: str | None
    status: str | None
    createdAt: str | None
    startedAt: str | None
    completedAt: str | None
    error: str | None
    workflowVersion: int | None
    workflowHash: str | None


class ExecutionLogRow(WosModel):
    id: str
    executionId: str
    nodeId: str | None
    nodeType: str | None
    nodeLabel: str | None
    status: str | None
    inputData: str | None
    outputData: str | None
    error: str | None
    duration: int | float | str | None
    timestamp: str | None


class ExecutionLogs(WosModel):
    executionId: str
    logs: list[ExecutionLogRow]


ExecutionMode = Literal["prefect", "inline"]


class ExecutionCreate(WosModel):
    workflowId: str | None = None
    inputs: dict[str, Any] | None = None
    organizationId: str | None = None
    workflow: dict[str, Any] | None = None
    priority: Literal["high", "normal", "low"] | None = "normal"
    mode: ExecutionMode | None = None
    callback: CallbackCreate | None = None
    version: int | Literal["draft", "published"] | None = None


class ExecutionProgress(WosModel):
    totalNodes: int
    completedNodes: int
    failedNodes: int
    skippedNodes: int
    percentage: int


class ExecutionPublic(WosModel):
    executionId: str
    workflowId: str
    workflowName: str | None
    organizationId: str | None
    status: str | None
    createdAt: str | None
    startedAt: str | None
    completedAt: str | None
    currentNodeId: str | None
    error: str | None
    progress: ExecutionProgress
    logs: list[ExecutionLogRow]
    inputs: Any
    nodeResults: Any
    finalOutput: Any
    mode: str | None
    modeReason: str | None
    attempts: int | None
    resumedAt: str | None
    retryOf: str | None
    priority: Literal["high", "normal", "low"] | None
    flowRunId: str | None
    prefectUrl: str | None
    callbacks: list[CallbackPublic]
    workflowVersion: int | None
    workflowHash: str | None


ExecutionStatus = Literal["pending", "running", "completed", "failed", "cancelled"]


class ExecutionSubmitted(WosModel):
    success: bool
    executionId: str
    status: str
    message: str
    workflowId: str
    workflowName: str | None


class ExecutionSummary(WosModel):
    id: str
    workflowId: str
    status: str | None
    createdAt: str | None
    startedAt: str | None
    completedAt: str | None
    error: str | None
    workflowVersion: int | None
    workflowHash: str | None


class ExecutionsPage(WosModel):
    executions: list[ExecutionListed]
    counts: ActiveCounts
    nextCursor: str | None


class GraphConnection(WosModel):
    fromNodeId: str
    toNodeId: str
    branch: str | None
    inputPort: str | None


class GraphNode(WosModel):
    id: str
    type: str
    label: str


class ExecutionGraph(WosModel):
    executionId: str
    workflowId: str
    workflowName: str | None
    nodes: list[GraphNode]
    connections: list[GraphConnection]


class Health(WosModel):
    service: str
    status: str
    version: str
    timestamp: str


class Liveness(WosModel):
    status: str


class NodeChange(WosModel):
    id: str
    keys: list[str]


class NodeExecute(WosModel):
    workflowId: str | None = None
    nodeId: str
    nodeType: str
    node: dict[str, Any]
    inputData: Any = None


class NodeRunFailed(WosModel):
    success: Literal[False]
    nodeId: str
    nodeType: str
    error: str
    message: str


class NodeRunSucceeded(WosModel):
    success: Literal[True]
    nodeId: str
    nodeType: str
    output: Any
    message: str


class NodesDiff(WosModel):
    added: list[str]
    removed: list[str]
    changed: list[NodeChange]


class Readiness(WosModel):
    status: str
    checks: dict[str, Check]
    detail: str | None = None


class RetryRequest(WosModel):
    fromScratch: bool | None = False
    callback: CallbackCreate | None = None
    priority: Literal["high", "normal", "low"] | None = None


class RetrySubmitted(WosModel):
    success: bool
    executionId: str
    status: str
    message: str
    workflowId: str
    workflowName: str | None
    retryOf: str


class VersionDetail(WosModel):
    version: int
    name: str | None
    description: str | None
    createdAt: str | None
    createdByName: str | None
    published: bool
    hash: str | None
    workflow: dict[str, Any]


class VersionDiff(WosModel):
    nodes: NodesDiff
    connections: ConnectionsDiff


class VersionPublic(WosModel):
    version: int
    name: str | None
    description: str | None
    createdAt: str | None
    createdByName: str | None
    published: bool
    hash: str | None


class VersionList(WosModel):
    versions: list[VersionPublic]


class WorkflowExecutions(WosModel):
    workflowId: str
    workflowName: str | None
    executions: list[ExecutionSummary]
    total: int


__all__ = [
    "WosModel",
    "ActiveCounts",
    "CallbackCreate",
    "CallbackPublic",
    "CancelResult",
    "Check",
    "ConnectionsDiff",
    "ErrorDetail",
    "ExecutionCreate",
    "ExecutionGraph",
    "ExecutionListed",
    "ExecutionLogRow",
    "ExecutionLogs",
    "ExecutionMode",
    "ExecutionProgress",
    "ExecutionPublic",
    "ExecutionStatus",
    "ExecutionSubmitted",
    "ExecutionSummary",
    "ExecutionsPage",
    "GraphConnection",
    "GraphNode",
    "Health",
    "Liveness",
    "NodeChange",
    "NodeExecute",
    "NodeRunFailed",
    "NodeRunSucceeded",
    "NodesDiff",
    "Readiness",
    "RetryRequest",
    "RetrySubmitted",
    "VersionDetail",
    "VersionDiff",
    "VersionList",
    "VersionPublic",
    "WorkflowExecutions",
]
