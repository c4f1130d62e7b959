"""Pure graph rules of contract §5.2: parsing, executable set, cycles, edge activation, inputs.

What a node type does differently (condition's branches, join's ports, a webhook's root input)
is declared with the type (`models.NodeRules`, via `@node`) and passed in: no wire name here.
"""

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from errors import CycleDetected, GraphValidationError
from models import EdgeDef, NodeDef, NodeRules, WorkflowDef

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


def check_size(workflow: WorkflowDef, *, max_nodes: int, max_connections: int) -> None:
    """Submit limits (MAX_WORKFLOW_NODES, MAX_WORKFLOW_CONNECTIONS; the limit itself is
    accepted): GraphValidationError naming the limit."""
    if len(workflow.nodes) > max_nodes:
        raise GraphValidationError(
            f"Workflow has {len(workflow.nodes):,} nodes; the limit is {max_nodes:,} "
            "(MAX_WORKFLOW_NODES)"
        )
    if len(workflow.connections) > max_connections:
        raise GraphValidationError(
            f"Workflow has {len(workflow.connections):,} connections; the limit is "
            f"{max_connections:,} (MAX_WORKFLOW_CONNECTIONS)"
        )


RulesOf = Callable[[str], NodeRules]
"""Node type -> its declared graph rules (`tasks.registry.rules_of`)."""


@dataclass
class Plan:
    """The executable part of a workflow: nodes in topological order, their live edges, and the
    graph rules of each node's type."""

    nodes: dict[str, NodeDef]
    order: list[str]
    incoming: dict[str, list[EdgeDef]] = field(default_factory=dict)
    outgoing: dict[str, list[EdgeDef]] = field(default_factory=dict)
    rules: dict[str, NodeRules] = field(default_factory=dict)
    dropped_connections: int = 0
    """Connections left out because an endpoint is missing or names no node (rule 1)."""


def build_plan(workflow: WorkflowDef, rules_of: RulesOf) -> Plan:
    """Drop dangling connections and unconnected nodes whose type does not run alone (comments),
    then order topologically. Raises CycleDetected (no node may run) when the executable nodes
    contain a cycle."""
    by_id = {n.id: n for n in workflow.nodes}
    edges = [e for e in workflow.connections if e.fromNodeId in by_id and e.toNodeId in by_id]
    connected = {e.fromNodeId for e in edges} | {e.toNodeId for e in edges}
    rules = {n.id: rules_of(n.type) for n in workflow.nodes}
    nodes = {n.id: n for n in workflow.nodes if rules[n.id].runs_unconnected or n.id in connected}
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
    dropped = len(workflow.connections) - len(edges)
    kept_rules = {nid: rules[nid] for nid in nodes}
    return Plan(nodes, order, incoming, outgoing, kept_rules, dropped)


def is_skipped(result: JSON) -> bool:
    return isinstance(result, dict) and bool(result.get("skipped"))


def is_failed(result: JSON) -> bool:
    return isinstance(result, dict) and result.get("success") is False


def edge_payload(edge: EdgeDef, source: NodeRules, result: JSON) -> tuple[bool, JSON]:
    """Rule 6: whether `edge` is active once its source settled with `result`, and its payload.
    `source` holds the rules of the source's type; by default every edge carries `outputData`."""
    if result is None or is_skipped(result) or is_failed(result):
        return False, None
    if source.route is not None:
        return source.route(result, edge.branch)
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


SKIPPED_NO_INPUT = "Skipped: no active incoming connection (branch not taken or upstream failed)"


def assemble_input(
    node: NodeDef,
    rules: NodeRules,
    active: list[tuple[EdgeDef, JSON]],
    has_parents: bool,
    inputs: dict[str, Any],
) -> tuple[bool, JSON, str]:
    """Rules 7 and 8. Returns `(run, input, skip_reason)`; `run` False means the node is skipped.
    `rules` (of the node's type) may supply a root input or its own way to gather inputs."""
    if not has_parents:
        if rules.root_input is not None:
            return True, rules.root_input(node.config, inputs), ""
        return True, None, ""
    if not active:
        return False, None, SKIPPED_NO_INPUT
    if rules.gather is not None:
        return rules.gather(active)
    if len(active) == 1:
        return True, active[0][1], ""
    return True, merge_payloads([p for _, p in active]), ""
