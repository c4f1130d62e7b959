"""Pydantic schemas of the HTTP API and the workflow JSON."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from states import ACTIVE_STATUSES, TERMINAL_STATUSES, ExecutionStatus  # noqa: F401


class NodeDef(BaseModel):
    """One node of `workflows.data`; UI runtime fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    label: str | None = None
    config: dict[str, Any] | None = None

    @property
    def display_label(self) -> str:
        return self.label or self.type


class EdgeDef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    fromNodeId: str
    toNodeId: str
    outputType: str | None = None
    fromPort: str | None = None
    inputPort: str | None = None

    @property
    def branch(self) -> str | None:
        """Which output handle of the source: `outputType`, falling back to `fromPort`."""
        return self.outputType if self.outputType is not None else self.fromPort


class WorkflowDef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    nodes: list[NodeDef] = Field(default_factory=list)
    connections: list[EdgeDef] = Field(default_factory=list)


class ExecutionCreate(BaseModel):
    """Body of `POST /api/workflows/execute`; unknown keys are tolerated."""

    model_config = ConfigDict(extra="ignore")

    workflowId: str | None = None
    inputs: dict[str, Any] | None = None
    organizationId: str | None = None
    workflow: dict[str, Any] | None = None
    mode: str | None = None


class NodeExecute(BaseModel):
    """Body of `POST /api/nodes/execute`."""

    model_config = ConfigDict(extra="ignore")

    workflowId: str | None = None
    nodeId: str
    nodeType: str
    node: dict[str, Any]
    inputData: Any = None


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    fromScratch: bool = False
