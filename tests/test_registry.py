"""Guards of the node registry: loud duplicates, every handler module imported, the v1 set."""

import ast
from pathlib import Path
from typing import Any

import pytest

import tasks
from tasks import registry
from tasks.registry import DuplicateNodeType, NodeConfig, UnknownNodeType, get_spec, node

TASKS_DIR = Path(tasks.__file__).parent
V1_TYPES = [
    "trigger",
    "manualInput",
    "output",
    "http",
    "llm",
    "condition",
    "addField",
    "join",
    "webhook",
    "comment",
    "splitColumns",
    "excelInput",
]


async def _handler(config: Any, data: Any, ctx: Any) -> dict[str, Any]:
    return {}


def test_duplicate_registration_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    node("registryTestType", config=NodeConfig)(_handler)
    with pytest.raises(DuplicateNodeType, match="registryTestType"):
        node("registryTestType", config=NodeConfig)(_handler)


def test_registering_an_existing_wire_name_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(DuplicateNodeType):
        node("http", config=NodeConfig)(_handler)


def test_unknown_type_raises() -> None:
    with pytest.raises(UnknownNodeType, match="No handler found for node type: nope"):
        get_spec("nope")


def _modules_defining_nodes() -> set[str]:
    found = set()
    for path in TASKS_DIR.glob("*.py"):
        for item in ast.walk(ast.parse(path.read_text())):
            if isinstance(item, ast.AsyncFunctionDef | ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", None) == "node"
                for d in item.decorator_list
            ):
                found.add(path.stem)
    return found


def _modules_imported_by_package() -> set[str]:
    tree = ast.parse((TASKS_DIR / "__init__.py").read_text())
    imported = set()
    for item in tree.body:
        if isinstance(item, ast.ImportFrom) and item.module == "tasks":
            imported |= {alias.name for alias in item.names}
        elif isinstance(item, ast.ImportFrom) and (item.module or "").startswith("tasks."):
            imported.add(item.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(item, ast.Import):
            imported |= {a.name.split(".")[1] for a in item.names if a.name.startswith("tasks.")}
    return imported


def test_every_handler_module_is_imported_by_the_package() -> None:
    defining = _modules_defining_nodes()
    assert {"basic", "logic", "transform", "http_request", "llm", "inputs"} <= defining
    assert defining - _modules_imported_by_package() == set()


@pytest.mark.parametrize("node_type", V1_TYPES)
def test_v1_node_type_is_registered(node_type: str) -> None:
    spec = get_spec(node_type)
    assert spec.type == node_type
    assert issubclass(spec.config, NodeConfig)
    assert node_type in tasks.node_types()


@pytest.mark.parametrize("node_type", V1_TYPES)
def test_only_network_types_retry(node_type: str) -> None:
    spec = get_spec(node_type)
    assert spec.network is (node_type in {"http", "llm"})
    assert spec.retries == (2 if spec.network else 0)
