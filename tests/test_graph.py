"""flows/graph.py: pure rules of contract §5.2, with node types' rules passed in."""

import ast
from pathlib import Path
from typing import Any

import pytest

import flows.graph
from flows.graph import assemble_input, build_plan, edge_payload, parse_workflow
from models import EdgeDef, NodeDef, NodeRules
from tasks.registry import rules_of


def common(_type: str) -> NodeRules:
    return NodeRules()


@pytest.mark.parametrize(
    "broken",
    [
        {"id": "x1"},
        {"fromNodeId": "a"},
        {"toNodeId": "b"},
        {"fromNodeId": 1, "toNodeId": "b"},
        {"fromNodeId": "a", "toNodeId": None},
        {"fromNodeId": ["a"], "toNodeId": {"id": "b"}},
    ],
)
def test_connection_without_endpoints_is_dropped_not_fatal(broken: dict[str, Any]) -> None:
    """Bug 10: such a connection is dropped like a dangling one, and counted."""
    workflow = parse_workflow(
        {
            "nodes": [{"id": "a", "type": "t"}, {"id": "b", "type": "t"}],
            "connections": [broken, {"fromNodeId": "a", "toNodeId": "b"}],
        }
    )
    plan = build_plan(workflow, common)
    assert plan.order == ["a", "b"]
    assert [(e.fromNodeId, e.toNodeId) for e in plan.incoming["b"]] == [("a", "b")]
    assert plan.dropped_connections == 1


def test_dangling_connections_are_counted() -> None:
    workflow = parse_workflow(
        {
            "nodes": [{"id": "a", "type": "t"}],
            "connections": [{"fromNodeId": "a", "toNodeId": "ghost"}, {"fromNodeId": "a"}],
        }
    )
    assert build_plan(workflow, common).dropped_connections == 2


def test_stored_definition_keeps_a_dropped_connection_dropped() -> None:
    """The API stores the parsed definition; parsed again by the runner it is still dropped."""
    data = {"nodes": [{"id": "a", "type": "t"}], "connections": [{"fromNodeId": 5}]}
    stored = parse_workflow(data).model_dump_json(exclude_none=True)
    assert build_plan(parse_workflow(stored), common).dropped_connections == 1


def test_routing_comes_from_the_rules_passed_in() -> None:
    """A branching type is declared by its rules; the graph module knows no wire name."""

    def odd_even(result: dict[str, Any], branch: str | None) -> tuple[bool, Any]:
        return (result["outputData"] % 2 == 1) == (branch == "odd"), result["outputData"]

    rules = NodeRules(route=odd_even)
    edge = EdgeDef(fromNodeId="p", toNodeId="x", outputType="odd")
    assert edge_payload(edge, rules, {"success": True, "outputData": 3}) == (True, 3)
    assert edge_payload(edge, rules, {"success": True, "outputData": 4}) == (False, 4)
    assert edge_payload(edge, NodeRules(), {"success": True, "outputData": 4}) == (True, 4)


def test_gather_and_root_input_come_from_the_rules_passed_in() -> None:
    pair = NodeRules(gather=lambda active: (True, [p for _, p in active], ""))
    node = NodeDef(id="n", type="anything")
    edges = [(EdgeDef(fromNodeId="a", toNodeId="n"), 1), (EdgeDef(fromNodeId="b", toNodeId="n"), 2)]
    assert assemble_input(node, pair, edges, True, {}) == (True, [1, 2], "")
    assert assemble_input(node, NodeRules(), edges, True, {}) == (True, [1, 2], "")
    seeded = NodeRules(root_input=lambda config, inputs: inputs["seed"])
    assert assemble_input(node, seeded, [], False, {"seed": 7}) == (True, 7, "")
    assert assemble_input(node, NodeRules(), [], False, {"seed": 7}) == (True, None, "")


def test_nodes_that_do_not_run_alone_are_dropped_when_unconnected() -> None:
    workflow = parse_workflow(
        {
            "nodes": [{"id": "a", "type": "t"}, {"id": "note", "type": "memo"}],
            "connections": [],
        }
    )
    alone = build_plan(workflow, lambda t: NodeRules(runs_unconnected=t != "memo"))
    assert alone.order == ["a"]
    assert build_plan(workflow, common).order == ["a", "note"]


@pytest.mark.parametrize(
    ("node_type", "declared"),
    [
        ("condition", "route"),
        ("splitColumns", "route"),
        ("join", "gather"),
        ("webhook", "root_input"),
    ],
)
def test_registry_declares_the_special_rules(node_type: str, declared: str) -> None:
    assert getattr(rules_of(node_type), declared) is not None
    assert rules_of("comment").runs_unconnected is False
    assert rules_of("no such type") == NodeRules()


def test_graph_imports_nothing_project_internal_but_models_and_errors() -> None:
    tree = ast.parse(Path(flows.graph.__file__).read_text())
    imported = {
        name.split(".")[0]
        for item in ast.walk(tree)
        if isinstance(item, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in item.names] if isinstance(item, ast.Import) else [item.module or ""]
        )
    }
    project = {p.stem for p in Path(flows.graph.__file__).parent.parent.glob("*.py")}
    project |= {"flows", "tasks", "database", "api", "bench"}
    assert imported & project <= {"models", "errors"}
