"""Pure graph rules of contract §5.2: parsing, executable set, cycles, edge activation, inputs.

What a node type does differently (condition's branches, join's ports, a webhook's root input)
is declared with the type (`models.NodeRules`, via `@node`) and passed in: no wire name here.
"""

import json
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from errors import CycleDetected, GraphValidationError, NodeExecutionError
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


@dataclass(frozen=True)
class FanInLimits:
    """What one node's merged input may hold: MAX_NODE_OUTPUT_ROWS and MAX_NODE_OUTPUT_BYTES,
    the limits of one node's output, measured the way node outputs are (tasks/limits.py)."""

    rows: int
    bytes: int
    measure: Callable[[Any, int], int]
    """`(value, budget)` -> about its encoded size (`tasks.limits.estimate_bytes`)."""
    sample: int = 1000
    """Items of a concatenation measured; beyond that, an even sample is scaled up."""


def _fan_in_error(count: int, what: str, limit: int, setting: str) -> NodeExecutionError:
    return NodeExecutionError(
        f"Fan-in of {count:,} connections gives {what}, over the limit of {limit:,} ({setting})"
    )


def _concat_bytes(payloads: list[JSON], rows: int, limits: FanInLimits) -> int:
    """About the encoded size of the concatenation of `payloads` (`rows` items, a list payload
    counting its items, any other one item), measured like `estimate_bytes` measures a list: at
    most `limits.sample` items, evenly spread over the whole concatenation, each measured by
    `limits.measure`, the sum scaled up. Nothing is built."""
    budget = limits.bytes
    step = max(1, rows // limits.sample)
    picks = iter(range(random.randrange(step) if rows > limits.sample else 0, rows, step))
    pick, offset, measured, total = next(picks, None), 0, 0, 0
    for p in payloads:
        size = len(p) if isinstance(p, list) else 1
        while pick is not None and pick < offset + size and total <= budget:
            item = p[pick - offset] if isinstance(p, list) else p
            total += limits.measure(item, budget - total) + 1
            measured += 1
            pick = next(picks, None)
        offset += size
        if pick is None or total > budget:
            break
    return total * rows // max(1, measured) + 2


def check_fan_in(payloads: list[JSON], limits: FanInLimits) -> None:
    """Before any concatenation is built: a NodeExecutionError naming the limit when the items
    of `payloads` (list payloads count their items; parallel connections each count theirs)
    exceed `limits.rows`, or their estimated encoded size exceeds `limits.bytes`. Time is
    linear in the number of payloads plus a bounded sample."""
    rows = sum(len(p) if isinstance(p, list) else 1 for p in payloads)
    if rows > limits.rows:
        raise _fan_in_error(len(payloads), f"{rows:,} rows", limits.rows, "MAX_NODE_OUTPUT_ROWS")
    size = _concat_bytes(payloads, rows, limits)
    if size > limits.bytes:
        raise _fan_in_error(
            len(payloads), f"about {size:,} bytes", limits.bytes, "MAX_NODE_OUTPUT_BYTES"
        )


def _merge_objects(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """`merged.update(p)` for each payload in order, with each distinct object merged once:
    keys in the order they are first seen, each value from the last payload holding the key.
    The same object delivered by 5,000 parallel connections costs one merge, not 5,000."""
    first: dict[int, dict[str, Any]] = {}
    last: dict[int, dict[str, Any]] = {}
    for p in payloads:
        first.setdefault(id(p), p)
        last.pop(id(p), None)
        last[id(p)] = p
    merged: dict[str, Any] = {}
    for p in first.values():
        merged.update(dict.fromkeys(p))
    for p in last.values():
        merged.update(p)
    return merged


def merge_payloads(payloads: list[JSON], limits: FanInLimits | None = None) -> JSON:
    """Fan-in (rule 8): objects merge shallowly in edge order; otherwise one concatenated list
    (nulls left out). With `limits`, a NodeExecutionError naming the limit instead of a merged
    input over MAX_NODE_OUTPUT_ROWS/BYTES: a concatenation is measured before it is built; a
    merged object (never larger than the objects already held) is measured once built."""
    if all(isinstance(p, dict) for p in payloads):
        merged = _merge_objects(payloads)
        if limits is not None and (size := limits.measure(merged, limits.bytes)) > limits.bytes:
            raise _fan_in_error(
                len(payloads), f"about {size:,} bytes", limits.bytes, "MAX_NODE_OUTPUT_BYTES"
            )
        return merged
    present = [p for p in payloads if p is not None]
    if limits is not None:
        check_fan_in(present, limits)
    out: list[Any] = []
    for p in present:
        if isinstance(p, list):
            out.extend(p)
        else:
            out.append(p)
    return out


SKIPPED_NO_INPUT = "Skipped: no active incoming connection (branch not taken or upstream failed)"


def assemble_input(
    node: NodeDef,
    rules: NodeRules,
    active: list[tuple[EdgeDef, JSON]],
    has_parents: bool,
    inputs: dict[str, Any],
    limits: FanInLimits | None = None,
) -> tuple[bool, JSON, str]:
    """Rules 7 and 8. Returns `(run, input, skip_reason)`; `run` False means the node is skipped.
    `rules` (of the node's type) may supply a root input or its own way to gather inputs. With
    `limits`, a fan-in over them raises NodeExecutionError (the node fails) before anything is
    merged or gathered (a type's own gathering is measured as a concatenation)."""
    if not has_parents:
        if rules.root_input is not None:
            return True, rules.root_input(node.config, inputs), ""
        return True, None, ""
    if not active:
        return False, None, SKIPPED_NO_INPUT
    if rules.gather is not None:
        if limits is not None and len(active) > 1:
            check_fan_in([p for _, p in active], limits)
        return rules.gather(active)
    if len(active) == 1:
        return True, active[0][1], ""
    return True, merge_payloads([p for _, p in active], limits), ""
