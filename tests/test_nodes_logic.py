"""condition, join and splitColumns handlers (contract §4.6, §4.8, §4.18; fixtures 02 and 03)."""

import json
from typing import Any

import pytest

from flows.graph import edge_payload
from models import EdgeDef
from tasks.registry import rules_of
from tests.conftest import CallNode
from tests.support import FIXTURES

MISSING = object()

ORDERS = [
    {"order_id": "O-1001", "customer_id": "C1", "amount": "120.50", "name": "Widget"},
    {"order_id": "O-1002", "customer_id": "C2", "amount": "80", "name": "Gadget"},
    {"order_id": "O-1003", "customer_id": "C9", "amount": "15", "name": "Bolt"},
]
CUSTOMERS = [
    {"customer_id": "C1", "name": "Acme", "region": "EU"},
    {"customer_id": "C2", "name": "Globex", "region": "US"},
    {"customer_id": "C3", "name": "Initech", "region": "US"},
]
# Verbatim from 02_spreadsheet_join_split.expected.md.
JOINED_OUTER = [
    {
        "order_id": "O-1001",
        "customer_id": "C1",
        "amount": "120.50",
        "name": "Widget",
        "B_name": "Acme",
        "region": "EU",
    },  # noqa: E501
    {
        "order_id": "O-1002",
        "customer_id": "C2",
        "amount": "80",
        "name": "Gadget",
        "B_name": "Globex",
        "region": "US",
    },  # noqa: E501
    {
        "order_id": "O-1003",
        "customer_id": "C9",
        "amount": "15",
        "name": "Bolt",
        "B_name": "",
        "region": "",
    },  # noqa: E501
    {
        "order_id": "",
        "customer_id": "C3",
        "amount": "",
        "name": "",
        "B_name": "Initech",
        "region": "US",
    },  # noqa: E501
]
SPLIT_A = [
    {"order_id": "O-1001", "amount": "120.50", "B_name": "Acme"},
    {"order_id": "O-1002", "amount": "80", "B_name": "Globex"},
    {"order_id": "O-1003", "amount": "15", "B_name": ""},
    {"order_id": "", "amount": "", "B_name": "Initech"},
]
SPLIT_B = [
    {"customer_id": "C1", "region": "EU"},
    {"customer_id": "C2", "region": "US"},
    {"customer_id": "C9", "region": ""},
    {"customer_id": "C3", "region": "US"},
]


def fixture_config(node_type: str) -> dict[str, Any]:
    """Config of the first node of `node_type` in fixture 02, as stored by the editor."""
    workflow = json.loads((FIXTURES / "02_spreadsheet_join_split.json").read_text())
    config: dict[str, Any] = next(n for n in workflow["nodes"] if n["type"] == node_type)["config"]
    return config


def batch(operator: str, target: Any, **extra: Any) -> dict[str, Any]:
    return {"conditionField": "v", "conditionOperator": operator, "conditionValue": target, **extra}


@pytest.mark.parametrize(
    ("operator", "value", "target", "expected"),
    [
        ("equals", "active", "active", True),
        ("equals", "Active", "active", False),
        ("equals", True, "true", True),
        ("equals", 85.0, "85", True),
        ("equals", 85, 85, True),
        ("equals", None, "null", True),
        ("equals", {"a": 1}, '{"a":1}', True),
        ("notEquals", "a", "b", True),
        ("notEquals", "a", "a", False),
        ("not_equals", "a", "b", True),
        ("greaterThan", 85, "80", True),
        ("greaterThan", 80, "80", False),
        ("greaterThan", "91.5", "50", True),
        ("greaterThan", "abc", "50", False),
        ("greaterThan", 5, "abc", False),
        ("greaterThan", None, "-1", False),
        ("greaterThan", True, "0", False),
        ("greaterThan", MISSING, "0", False),
        ("greater_than", 2, "1", True),
        ("lessThan", 42, "50", True),
        ("lessThan", 50, "50", False),
        ("less_than", " 3 ", "4", True),
        ("greaterOrEqual", 80, "80", True),
        ("greaterOrEqual", 79.9, "80", False),
        ("greater_or_equal", 81, "80", True),
        ("lessOrEqual", 80, "80", True),
        ("lessOrEqual", 81, "80", False),
        ("less_or_equal", "7", "7.0", True),
        ("contains", "Hello World", "world", True),
        ("contains", "Hello", "bye", False),
        ("contains", None, "x", False),
        ("notContains", "Hello World", "WORLD", False),
        ("notContains", "Hello", "bye", True),
        ("not_contains", None, "x", True),
        ("startsWith", "Hello", "he", True),
        ("startsWith", "Hello", "lo", False),
        ("starts_with", "Hello", "HEL", True),
        ("endsWith", "Hello", "LO", True),
        ("endsWith", "Hello", "he", False),
        ("ends_with", "file.CSV", ".csv", True),
        ("isEmpty", "", "", True),
        ("isEmpty", None, "", True),
        ("isEmpty", MISSING, "", True),
        ("isEmpty", 0, "", False),
        ("isEmpty", " ", "", False),
        ("is_empty", "x", "", False),
        ("isNotEmpty", "x", "", True),
        ("isNotEmpty", MISSING, "", False),
        ("is_not_empty", 0, "", True),
        ("somethingElse", "x", "x", True),
        ("somethingElse", "x", "y", False),
    ],
)
async def test_condition_operator(
    call_node: CallNode, operator: str, value: Any, target: Any, expected: bool
) -> None:
    record = {} if value is MISSING else {"v": value}
    result = await call_node("condition", batch(operator, target), record)
    assert result["conditionResult"] is expected
    assert result["outputData"] == record


async def test_condition_default_operator_is_equals(call_node: CallNode) -> None:
    config = {"conditionField": "status", "conditionValue": "active"}
    result = await call_node("condition", config, {"status": "active"})
    assert result["conditionResult"] is True


@pytest.mark.parametrize(
    ("logical", "record", "expected"),
    [
        ("AND", {"v": 85, "w": "x"}, True),
        ("AND", {"v": 85, "w": "y"}, False),
        ("AND", {"v": 10, "w": "x"}, False),
        ("OR", {"v": 10, "w": "x"}, True),
        ("OR", {"v": 85, "w": "y"}, True),
        ("OR", {"v": 10, "w": "y"}, False),
    ],
)
async def test_condition_additional_conditions(
    call_node: CallNode, logical: str, record: dict[str, Any], expected: bool
) -> None:
    config = batch(
        "greaterThan",
        "80",
        logicalOperator=logical,
        additionalConditions=[
            {"id": "c2", "field": "w", "operator": "equals", "value": "x"},
            {"id": "c3", "field": "", "operator": "equals", "value": "ignored: no field"},
        ],
    )
    result = await call_node("condition", config, record)
    assert result["conditionResult"] is expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([{"v": 85}, {"v": 1}], True),
        ([{"v": 1}, {"v": 85}], False),
        ({"v": 85}, True),
        ([], False),
        (None, False),
    ],
)
async def test_condition_batch_evaluates_first_record(
    call_node: CallNode, data: Any, expected: bool
) -> None:
    result = await call_node("condition", batch("greaterThan", "80"), data)
    assert result["conditionResult"] is expected
    assert result["outputData"] == data
    assert "trueRecords" not in result and "falseRecords" not in result


SENSORS = [
    {"sensor": "S1", "value": 42},
    {"sensor": "S2", "value": 77},
    {"sensor": "S3", "value": "91.5"},
]


@pytest.mark.parametrize(
    ("data", "true_rows", "false_rows"),
    [
        (SENSORS, SENSORS[1:], SENSORS[:1]),  # fixture 03
        (SENSORS[:1], [], SENSORS[:1]),  # fixture 03 variant
        ({"sensor": "S9", "value": 99}, [{"sensor": "S9", "value": 99}], []),
        (None, [], []),
        ([], [], []),
    ],
)
async def test_condition_per_row_splits_records(
    call_node: CallNode, data: Any, true_rows: list[Any], false_rows: list[Any]
) -> None:
    config = batch("greaterThan", "50", processingMode="perRow")
    config["conditionField"] = "value"
    result = await call_node("condition", config, data)
    assert result["outputData"] == true_rows
    assert result["trueRecords"] == true_rows
    assert result["falseRecords"] == false_rows
    assert result["conditionResult"] is bool(true_rows)


@pytest.mark.parametrize(
    ("branch", "key"), [("true", "trueRecords"), ("false", "falseRecords"), (None, "trueRecords")]
)
async def test_condition_per_row_envelope_routes_in_engine(
    call_node: CallNode, branch: str | None, key: str
) -> None:
    config = {
        "conditionField": "value",
        "conditionOperator": "greaterThan",
        "conditionValue": "50",
        "processingMode": "perRow",
    }
    result = await call_node("condition", config, SENSORS[:1])
    active, payload = edge_payload(
        EdgeDef(fromNodeId="c", toNodeId="x", outputType=branch), rules_of("condition"), result
    )
    assert active is True
    assert payload == result[key]


async def test_join_fixture_02_outer_merge(call_node: CallNode) -> None:
    result = await call_node("join", fixture_config("join"), {"A": ORDERS, "B": CUSTOMERS})
    assert result["outputData"] == JOINED_OUTER
    assert [list(row) for row in result["outputData"]] == [list(JOINED_OUTER[0])] * 4


async def test_join_fixture_02_inner_variant(call_node: CallNode) -> None:
    config = {**fixture_config("join"), "joinType": "inner"}
    result = await call_node("join", config, {"A": ORDERS, "B": CUSTOMERS})
    assert result["outputData"] == JOINED_OUTER[:2]


@pytest.mark.parametrize(
    ("config", "a", "b", "expected"),
    [
        ({}, [{"x": 1}], [{"x": 2}], [{"x": 1}, {"x": 2}]),
        ({"joinStrategy": "concat"}, {"x": 1}, [{"y": 2}], [{"x": 1}, {"y": 2}]),
        ({"joinStrategy": "concat"}, [], [{"y": 2}], [{"y": 2}]),
        ({"joinStrategy": "mergeByKey"}, [{"k": 1}], [{"k": 1}], [{"k": 1}, {"k": 1}]),
        (
            {"joinStrategy": "mergeByKey", "joinKey": "k"},
            [{"k": "1", "a": "x"}],
            [{"k": 1, "b": "y"}],
            [],
        ),
        (
            {"joinStrategy": "mergeByKey", "joinKey": "k"},
            [{"k": 1, "a": "x"}],
            [{"k": 1.0, "b": "y"}],
            [{"k": 1, "a": "x", "b": "y"}],
        ),
        (
            {"joinStrategy": "mergeByKey", "joinKey": "k", "joinType": "outer"},
            [{"k": "1", "a": "x"}],
            [{"k": 1, "b": "y"}],
            [{"k": "1", "a": "x", "b": ""}, {"k": 1, "a": "", "b": "y"}],
        ),
        (
            {"joinStrategy": "mergeByKey", "joinKey": "k"},
            {"k": "a", "v": 1},
            {"k": "a", "v": 2},
            [{"k": "a", "v": 1, "B_v": 2}],
        ),
        (
            {"joinStrategy": "mergeByKey", "joinKey": "k"},
            [{"k": 1, "v": 1}, {"k": 2, "v": 2, "w": 0}],
            [{"k": 2, "x": 9}, {"k": 1, "x": 8}],
            [{"k": 1, "v": 1, "x": 8}, {"k": 2, "v": 2, "x": 9}],
        ),
        (
            {"joinStrategy": "mergeByKey", "joinKey": "k"},
            [{"k": True, "a": 1}, {"k": None, "a": 2}, {"k": {"o": 1}, "a": 3}],
            [{"k": 1, "b": "one"}, {"k": None, "b": "null"}, {"k": {"o": 1}, "b": "obj"}],
            [{"k": None, "a": 2, "b": "null"}],
        ),
    ],
)
async def test_join_strategies(
    call_node: CallNode, config: dict[str, Any], a: Any, b: Any, expected: list[Any]
) -> None:
    result = await call_node("join", config, {"A": a, "B": b})
    assert result["outputData"] == expected


async def test_join_first_matching_b_row_wins(call_node: CallNode) -> None:
    config = {"joinStrategy": "mergeByKey", "joinKey": "k"}
    data = {"A": [{"k": 1}], "B": [{"k": 1, "v": "first"}, {"k": 1, "v": "second"}]}
    result = await call_node("join", config, data)
    assert result["outputData"] == [{"k": 1, "v": "first"}]


async def test_split_columns_fixture_02(call_node: CallNode) -> None:
    result = await call_node("splitColumns", fixture_config("splitColumns"), JOINED_OUTER)
    assert result["outputData"] == SPLIT_A
    assert result["outputA"] == SPLIT_A
    assert result["outputB"] == SPLIT_B


async def test_split_columns_fixture_02_inner_variant(call_node: CallNode) -> None:
    result = await call_node("splitColumns", fixture_config("splitColumns"), JOINED_OUTER[:2])
    assert result["outputA"] == SPLIT_A[:2]
    assert result["outputB"] == SPLIT_B[:2]


@pytest.mark.parametrize(
    ("config", "data", "out_a", "out_b"),
    [
        ({}, [{"a": 1}, {"b": 2}], [{"a": 1}, {"b": 2}], [{}, {}]),
        ({"columnsOutputA": [], "columnsOutputB": []}, [], [], []),
        ({"columnsOutputA": ["a", "z"]}, [{"a": 1, "b": 2}], [{"a": 1}], [{}]),
        (
            {"columnsOutputA": ["a"], "columnsOutputB": ["b", "a"]},
            [{"a": None, "b": 2}],
            [{"a": None}],
            [{"b": 2, "a": None}],
        ),
    ],
)
async def test_split_columns_per_record(
    call_node: CallNode, config: dict[str, Any], data: list[Any], out_a: Any, out_b: Any
) -> None:
    result = await call_node("splitColumns", config, data)
    assert (result["outputData"], result["outputA"], result["outputB"]) == (out_a, out_a, out_b)


@pytest.mark.parametrize("data", [None, {"a": 1}, "text"])
async def test_split_columns_passes_non_list_through(call_node: CallNode, data: Any) -> None:
    result = await call_node("splitColumns", {"columnsOutputA": ["a"]}, data)
    assert result["outputData"] == data
    assert "outputA" not in result and "outputB" not in result
