"""Pure graph rules of contract §5.2: parsing, executable set, cycles, edge activation, inputs."""

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from errors import CycleDetected, GraphValidationError
from models import EdgeDef, NodeDef, WorkflowDef

JSON = Any


def parse_workflow(data: Any) -> WorkflowDef:
    """Parse `workflows.data` (a JSON string or an already decoded object)."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise GraphValidationError(f"Workflow data is not valid JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GraphValidationError("Workflow data must be a JSON object with nodes and connections")
    data = {k: (v if v is not None else []) for k, v in data.items()}
    try:
        workflow = WorkflowDef.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise GraphValidationError(
            f"Invalid workflow definition at {where}: {err['msg']}"
        ) from None
    seen: set[str] = set()
    for node in workflow.nodes:
        if node.id in seen:
            raise GraphValidationError(f"Duplicate node id in workflow: {node.id}")
        seen.add(node.id)
    return workflow


@dataclass
class Plan:
    """The executable part of a workflow: nodes in topological order and their live edges."""

    nodes: dict[str, NodeDef]
    order: list[str]
    incoming: dict[str, list[EdgeDef]] = field(default_factory=dict)
    outgoing: dict[str, list[EdgeDef]] = field(default_factory=dict)


def build_plan(workflow: WorkflowDef) -> Plan:
    """Drop dangling edges and unconnected comments, then order topologically.

    Raises CycleDetected (no node may run) when the executable nodes contain a cycle.
    """
    by_id = {n.id: n for n in workflow.nodes}
    edges = [e for e in workflow.connections if e.fromNodeId in by_id and e.toNodeId in by_id]
    connected = {e.fromNodeId for e in edges} | {e.toNodeId for e in edges}
    nodes = {n.id: n for n in workflow.nodes if n.type != "comment" or n.id in connected}
    incoming: dict[str, list[EdgeDef]] = {nid: [] for nid in nodes}
    outgoing: dict[str, list[EdgeDef]] = {nid: [] for nid in nodes}
    for edge in edges:
        outgoing[edge.fromNodeId].append(edge)
        incoming[edge.toNodeId].append(edge)
    indegree = {nid: len(incoming[nid]) for nid in nodes}
    queue = deque(nid for nid in nodes if indegree[nid] == 0)
    order: list[str] = []
    while queue:
        nid = queue.popleft()
        order.append(nid)
        for edge in outgoing[nid]:
            indegree[edge.toNodeId] -= 1
            if indegree[edge.toNodeId] == 0:
                queue.append(edge.toNodeId)
    if len(order) != len(nodes):
        stuck = [nid for nid in nodes if indegree[nid] > 0]
        raise CycleDetected(
            "Circular dependency detected in workflow: nodes " + ", ".join(stuck) + " form a cycle"
        )
    return Plan(nodes, order, incoming, outgoing)


def is_skipped(result: JSON) -> bool:
    return isinstance(result, dict) and bool(result.get("skipped"))


def is_failed(result: JSON) -> bool:
    return isinstance(result, dict) and result.get("success") is False


def edge_payload(edge: EdgeDef, source: NodeDef, result: JSON) -> tuple[bool, JSON]:
    """Rule 6: whether `edge` is active once its source settled with `result`, and its payload."""
    if result is None or is_skipped(result) or is_failed(result):
        return False, None
    branch = edge.branch
    if source.type == "condition":
        if "trueRecords" in result or "falseRecords" in result:  # perRow: every edge is live
            key = "falseRecords" if branch == "false" else "trueRecords"
            return True, result.get(key, [])
        passed = bool(result.get("conditionResult"))
        return (passed != (branch == "false")), result.get("outputData")
    if source.type == "splitColumns" and "outputA" in result:
        return True, result.get("outputB" if branch == "B" else "outputA")
    return True, result.get("outputData")


def merge_payloads(payloads: list[JSON]) -> JSON:
    """Fan-in (rule 8): objects merge shallowly in edge order; otherwise one concatenated list."""
    if all(isinstance(p, dict) for p in payloads):
        merged: dict[str, Any] = {}
        for p in payloads:
            merged.update(p)
        return merged
    out: list[Any] = []
    for p in payloads:
        if isinstance(p, list):
            out.extend(p)
        elif p is not None:
            out.append(p)
    return out


def _concat(payloads: list[JSON]) -> JSON:
    if len(payloads) == 1:
        return payloads[0]
    out: list[Any] = []
    for p in payloads:
        out.extend(p if isinstance(p, list) else [p])
    return out


def assemble_input(
    node: NodeDef, active: list[tuple[EdgeDef, JSON]], has_parents: bool, inputs: dict[str, Any]
) -> tuple[bool, JSON, str]:
    """Rules 7 and 8. Returns `(run, input, skip_reason)`; `run` False means the node is skipped."""
    if not has_parents:
        if node.type == "webhook":
            data = inputs.get("_webhookData")
            if data is None:
                data = (node.config or {}).get("webhookData")
            return True, ({} if data is None else data), ""
        return True, None, ""
    if not active:
        return (
            False,
            None,
            "Skipped: no active incoming connection (branch not taken or upstream failed)",
        )
    if node.type == "join":
        a = [p for e, p in active if (e.inputPort or "A") != "B"]
        b = [p for e, p in active if e.inputPort == "B"]
        if not a or not b:
            side = "A" if not a else "B"
            return False, None, f"Skipped: join input {side} received no data"
        return True, {"A": _concat(a), "B": _concat(b)}, ""
    if len(active) == 1:
        return True, active[0][1], ""
    return True, merge_payloads([p for _, p in active]), ""
