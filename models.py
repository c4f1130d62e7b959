"""Pydantic schemas of the workflow JSON (the API's own are in `api.schemas`)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    """One connection. A missing or non-string endpoint becomes "", which names no node: the
    connection is then dropped like any other whose endpoints do not exist (contract §5.2)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    fromNodeId: str = ""
    toNodeId: str = ""
    outputType: str | None = None
    fromPort: str | None = None
    inputPort: str | None = None

    @field_validator("fromNodeId", "toNodeId", mode="before")
    @classmethod
    def _endpoint(cls, value: Any) -> str:
        return value if isinstance(value, str) else ""

    @property
    def branch(self) -> str | None:
        """Which output handle of the source: `outputType`, falling back to `fromPort`."""
        return self.outputType if self.outputType is not None else self.fromPort


Route = Callable[[dict[str, Any], str | None], tuple[bool, Any]]
"""`(completed result, edge branch) -> (edge active?, payload it carries)`."""
Gather = Callable[[list[tuple[EdgeDef, Any]]], tuple[bool, Any, str]]
"""`(active incoming edges with payloads) -> (run?, input, skip reason)`; never called empty."""
RootInput = Callable[[dict[str, Any] | None, dict[str, Any]], Any]
"""`(node config, execution inputs) -> input` of a node without incoming connections."""


@dataclass(frozen=True)
class NodeRules:
    """How a node type sits in the graph (contract §5.2 rules 2, 6 and 8), declared with its
    handler (`@node(..., route=...)`); None means the common rule of `flows.graph`."""

    route: Route | None = None
    gather: Gather | None = None
    root_input: RootInput | None = None
    runs_unconnected: bool = True
    """False: dropped from the executable set when it has no connection (comments)."""


class WorkflowDef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    nodes: list[NodeDef] = Field(default_factory=list)
    connections: list[EdgeDef] = Field(default_factory=list)
