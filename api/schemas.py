"""The API's request bodies and answers (contract §1), named by direction: `…Create`/`…Request`
come in, `…Public`/`…Submitted`/`…Result` go out. Every key of an answer is always present
(nulls are sent, never dropped), which the OpenAPI schema states by marking all of them required.
"""

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from database.events import CANCELLED, COMPLETED, EVENT_TYPES, FAILED
from states import ExecutionMode


class _Body(BaseModel):
    """A request body: unknown keys are tolerated (the Node client may send more). Text that is
    not valid Unicode (a lone surrogate) is refused before, as the JSON is decoded
    (`api/json_body.py`)."""

    model_config = ConfigDict(extra="ignore")


class _Answer(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


Priority = Literal["high", "normal", "low"]
"""An execution's claim priority (`database.claim_order.PRIORITIES`)."""
TERMINAL_EVENTS = (COMPLETED, FAILED, CANCELLED)
CALLBACK_URL_MAX = 2048


class CallbackCreate(_Body):
    """`callback` of an execute or retry body: where the service POSTs the execution's events,
    signed as Standard Webhooks say (flows/callbacks.py)."""

    url: str = Field(max_length=CALLBACK_URL_MAX)
    events: list[str] = Field(default=list(TERMINAL_EVENTS), min_length=1, max_length=20)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("callback url must be an http:// or https:// URL with a host")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ValueError("callback url has an invalid port") from None
        return value.strip()

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(
                f"unknown callback event(s) {', '.join(map(repr, unknown))}; "
                f"use {', '.join(EVENT_TYPES)}"
            )
        return list(dict.fromkeys(value))


class ExecutionCreate(_Body):
    """Body of `POST /api/workflows/execute`."""

    workflowId: str | None = None
    inputs: dict[str, Any] | None = None
    organizationId: str | None = None
    workflow: dict[str, Any] | None = None
    """An inline definition `{nodes, connections}`, run instead of the stored workflow."""
    priority: Priority = "normal"
    """Claim priority: higher first, first-in-first-out within one (database/claim_order.py)."""
    mode: ExecutionMode | None = None
    """Where the nodes run; case and surrounding spaces are ignored; EXECUTION_MODE if absent
    (or one of the original service's flow names, `LEGACY_MODES`)."""
    callback: CallbackCreate | None = None

    version: int | Literal["draft", "published"] | None = None
    """Which definition of the stored workflow runs: "draft" (`workflows.data`), "published"
    (the version publishedVersionId names) or a version number; DEFAULT_WORKFLOW_VERSION if
    absent (api/versions.py `resolve`)."""

    @field_validator("version", mode="before")
    @classmethod
    def _normalise_version(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError('version must be "draft", "published" or a version number')
        if isinstance(value, int) and not 0 <= value <= VERSION_MAX:
            raise ValueError(f"version must be between 0 and {VERSION_MAX}")
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("mode", mode="before")
    @classmethod
    def _normalise_mode(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            return None if value in LEGACY_MODES else value
        return value


VERSION_MAX = 2**31 - 1
"""The largest version number (`workflow_versions.version` is a 32-bit INTEGER on PostgreSQL)."""

LEGACY_MODES = frozenset({"", "optimized", "legacy"})
"""`mode` values of the original service (contract §1: its two flows, "optimized" by default):
accepted, and they mean the default EXECUTION_MODE."""


class RetryRequest(_Body):
    """Optional body of `POST /api/executions/{id}/retry`."""

    fromScratch: bool = False
    callback: CallbackCreate | None = None
    """Replaces the retried execution's callback (which the retry keeps otherwise)."""
    priority: Priority | None = None
    """Replaces the retried execution's priority (which the retry keeps otherwise)."""


class NodeExecute(_Body):
    """Body of `POST /api/nodes/execute`."""

    workflowId: str | None = None
    nodeId: str
    nodeType: str
    node: dict[str, Any]
    inputData: Any = None


class ErrorDetail(_Answer):
    """Every error answer: a readable string, never a list."""

    detail: str


class Health(_Answer):
    service: str
    status: str = Field(description='Always "running"; the Node backend checks it.')
    version: str
    timestamp: str


class ExecutionSubmitted(_Answer):
    """A submit was accepted: the execution row is committed, a worker runs it."""

    success: bool
    executionId: str
    status: str
    message: str
    workflowId: str
    workflowName: str | None


class RetrySubmitted(ExecutionSubmitted):
    retryOf: str
    """The execution this one retries."""


class ExecutionProgress(_Answer):
    totalNodes: int
    completedNodes: int
    failedNodes: int
    skippedNodes: int
    percentage: int = Field(ge=0, le=100)


class ExecutionLogRow(_Answer):
    """An `execution_logs` row as stored; `inputData`/`outputData` are JSON text."""

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
    """Milliseconds; a row the Node backend wrote is passed on as stored, whatever its type."""
    timestamp: str | None


class CallbackPublic(_Answer):
    """One callback delivery (an event POSTed to the execution's callback url)."""

    webhookId: str
    """The `webhook-id` header, the same on every attempt."""
    url: str
    event: str
    status: str
    """pending (waiting for its first or next attempt), delivered or failed."""
    attempts: int
    nextAttemptAt: str | None
    """When a pending delivery is tried next (UTC, ms)."""
    lastError: str | None
    deliveredAt: str | None


class ExecutionPublic(_Answer):
    """`GET /api/executions/{id}`: the row, its progress, the last 10 logs, and the service's own
    state (None for rows the service did not create). JSON columns are decoded."""

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
    priority: Priority | None
    """Its claim priority; null for rows the service did not create."""
    flowRunId: str | None
    prefectUrl: str | None
    """The flow run's page in the Prefect UI (`<PREFECT_UI_URL>/runs/flow-run/<flowRunId>`); null
    when the execution did not run in Prefect."""
    callbacks: list[CallbackPublic]
    """The callback deliveries, by event (the latest 500)."""
    workflowVersion: int | None = None
    """The workflow version that ran; null for the draft, an inline workflow, or a row the
    service did not create."""
    workflowHash: str | None = None
    """sha256 hex of the RFC 8785 canonical JSON of the definition's {nodes, connections} as
    stored (null for rows the service did not create)."""


class ExecutionLogs(_Answer):
    executionId: str
    logs: list[ExecutionLogRow]


class CancelResult(_Answer):
    """`success` is false (still 200) when the execution had already ended."""

    success: bool
    executionId: str
    message: str
    previousStatus: str | None


class NodeRunSucceeded(_Answer):
    success: Literal[True]
    nodeId: str
    nodeType: str
    output: Any
    """The node's whole result envelope."""
    message: str


class NodeRunFailed(_Answer):
    success: Literal[False]
    nodeId: str
    nodeType: str
    error: str
    message: str


NodeRunResult = NodeRunSucceeded | NodeRunFailed


class ExecutionSummary(_Answer):
    id: str
    workflowId: str
    status: str | None
    createdAt: str | None
    startedAt: str | None
    completedAt: str | None
    error: str | None
    workflowVersion: int | None = None
    workflowHash: str | None = None


class WorkflowExecutions(_Answer):
    """A workflow's executions, newest first, and how many it has in all."""

    workflowId: str
    workflowName: str | None
    executions: list[ExecutionSummary]
    total: int


class ExecutionListed(_Answer):
    """One row of `GET /api/executions` (the dashboard's list)."""

    executionId: str
    workflowId: str
    workflowName: str | None
    """The service's record of it, else the stored workflow's name; None for inline runs."""
    organizationId: str | None
    status: str | None
    createdAt: str | None
    startedAt: str | None
    completedAt: str | None
    error: str | None
    workflowVersion: int | None = None
    workflowHash: str | None = None


class ActiveCounts(_Answer):
    pending: int
    running: int


class ExecutionsPage(_Answer):
    """`GET /api/executions`: a page of every workflow's executions, newest first."""

    executions: list[ExecutionListed]
    counts: ActiveCounts
    """Executions pending and running among those the key may see (of `workflowId` when given),
    whatever the status filter and page."""
    nextCursor: str | None
    """`before` of the next (older) page; None on the last page."""


class GraphNode(_Answer):
    id: str
    type: str
    label: str
    """The node's label, else its type."""


class GraphConnection(_Answer):
    fromNodeId: str
    toNodeId: str
    branch: str | None
    """The source's output the edge leaves from (`outputType`, else `fromPort`)."""
    inputPort: str | None


class ExecutionGraph(_Answer):
    """`GET /api/executions/{id}/workflow`: the definition the execution runs, as a graph (node
    configs are left out: they may hold credentials)."""

    executionId: str
    workflowId: str
    workflowName: str | None
    nodes: list[GraphNode]
    connections: list[GraphConnection]


class VersionPublic(_Answer):
    """One of the Node backend's versions of a workflow (`workflow_versions`)."""

    version: int
    name: str | None
    description: str | None
    createdAt: str | None
    createdByName: str | None
    published: bool
    """Whether `workflows.publishedVersionId` names it (what triggers run)."""
    hash: str | None
    """As `workflowHash`; null when the definition is over the submit limits."""


class VersionList(_Answer):
    """`GET /api/workflows/{id}/versions`, newest first."""

    versions: list[VersionPublic]


class VersionDetail(VersionPublic):
    """`GET /api/workflows/{id}/versions/{n}`: a version and its definition as stored."""

    workflow: dict[str, Any]
    """`{nodes, connections}` of the version's data."""


class NodeChange(_Answer):
    id: str
    keys: list[str]
    """The config keys whose values differ, plus `type`/`label` when those differ."""


class NodesDiff(_Answer):
    added: list[str]
    removed: list[str]
    changed: list[NodeChange]


class ConnectionsDiff(_Answer):
    added: list[dict[str, Any]]
    """Connections of `to` not in `from` (compared by endpoints, branch and input port)."""
    removed: list[dict[str, Any]]


class VersionDiff(_Answer):
    """`GET /api/workflows/{id}/versions/diff?from=a&to=b`."""

    nodes: NodesDiff
    connections: ConnectionsDiff


_ERRORS = {
    400: "A body that cannot be decoded (not UTF-8 JSON)",
    401: "Missing or invalid API key (only when API_KEYS is set)",
    403: "An organization key's body names another organization",
    404: "Unknown id (or of another organization than an organization key's)",
    409: "Conflicts with the current state",
    429: "Over RATE_LIMITS; the Retry-After header says in how many seconds to retry",
    413: "Request body larger than MAX_REQUEST_BYTES",
    422: "Invalid request",
    500: "Internal error <id>; the service log has the details under that id",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` documenting error answers, all `{"detail": str}`."""
    return {code: {"model": ErrorDetail, "description": _ERRORS[code]} for code in codes}


API_ERRORS = error_responses(401, 413, 422, 500)
"""What any route behind the API key can answer."""
