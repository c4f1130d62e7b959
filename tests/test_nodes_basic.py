"""trigger, manualInput, output, webhook and comment handlers (contract §4.1-4.3, 4.9, 4.10)."""

import re
from typing import Any

import pytest

from tests.conftest import CallNode

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.mark.parametrize("data", [None, {"a": 1}, [1, 2]])
async def test_trigger_outputs_empty_object(call_node: CallNode, data: Any) -> None:
    result = await call_node("trigger", {"scheduleInterval": "5m"}, data)
    assert result["success"] is True
    assert result["outputData"] == {}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"manualInputVarName": "temperature", "manualInputVarValue": "85"}, {"temperature": 85}),
        ({"inputVarName": "request", "inputVarValue": "refund"}, {"request": "refund"}),
        ({"variableName": "qty", "variableValue": "12.50"}, {"qty": 12.5}),
        ({}, {"input": ""}),
        (
            {"manualInputVarName": "", "inputVarName": "legacy", "variableName": "ai"},
            {"legacy": ""},
        ),
        ({"manualInputVarName": "x", "manualInputVarValue": "", "inputVarValue": "7"}, {"x": 7}),
        ({"manualInputVarName": "x", "manualInputVarValue": " 42 "}, {"x": 42}),
        ({"manualInputVarName": "x", "manualInputVarValue": "85.0"}, {"x": 85}),
        ({"manualInputVarName": "x", "manualInputVarValue": "-0.5"}, {"x": -0.5}),
        ({"manualInputVarName": "x", "manualInputVarValue": "1e3"}, {"x": 1000}),
        ({"manualInputVarName": "x", "manualInputVarValue": "B-7"}, {"x": "B-7"}),
        ({"manualInputVarName": "x", "manualInputVarValue": "0x10"}, {"x": "0x10"}),
        ({"manualInputVarName": "x", "manualInputVarValue": "Infinity"}, {"x": "Infinity"}),
        ({"manualInputVarName": "x", "manualInputVarValue": "12abc"}, {"x": "12abc"}),
        ({"manualInputVarName": "x", "inputVarValue": 85}, {"x": 85}),
    ],
)
async def test_manual_input_resolves_name_and_value(
    call_node: CallNode, config: dict[str, Any], expected: dict[str, Any]
) -> None:
    result = await call_node("manualInput", config, {"ignored": True})
    assert result["outputData"] == expected


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("72", 72),
        (80, 80),
        (80.5, 80.5),
        ("hot", "hot"),
        ("", ""),
        (True, True),
        ([1, "2"], [1, "2"]),
        (None, 85),
    ],
)
async def test_manual_input_runtime_override(
    call_node: CallNode, override: Any, expected: Any
) -> None:
    config = {"manualInputVarName": "temperature", "manualInputVarValue": "85"}
    result = await call_node("manualInput", config, None, inputs={"mi": override}, node_id="mi")
    assert result["outputData"] == {"temperature": expected}


async def test_manual_input_ignores_inputs_of_other_nodes(call_node: CallNode) -> None:
    config = {"manualInputVarName": "t", "manualInputVarValue": "1"}
    result = await call_node("manualInput", config, None, inputs={"other": "9"}, node_id="mi")
    assert result["outputData"] == {"t": 1}


@pytest.mark.parametrize("data", [None, {"a": 1}, [{"a": 1}, {"a": 2}], "text", 0])
async def test_output_passes_input_through_and_is_final(call_node: CallNode, data: Any) -> None:
    result = await call_node("output", {}, data)
    assert result["outputData"] == data
    assert result["isFinal"] is True


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([{"name": "Ana"}, {"name": "Luis"}], [{"name": "Ana"}, {"name": "Luis"}]),
        ({"name": "Eva"}, {"name": "Eva"}),
        ({}, {}),
        (None, {}),
    ],
)
async def test_webhook_outputs_its_input(call_node: CallNode, data: Any, expected: Any) -> None:
    result = await call_node("webhook", {}, data, node_id="wh_1")
    assert result["outputData"] == expected
    assert result["data"] == expected
    assert result["webhookId"] == "wh_1"
    assert ISO_MS_Z.match(result["receivedAt"])


async def test_webhook_id_from_config(call_node: CallNode) -> None:
    result = await call_node("webhook", {"webhookId": "hook-7", "webhookToken": "t"}, {"a": 1})
    assert result["webhookId"] == "hook-7"


@pytest.mark.parametrize("data", [None, {"a": 1}, [{"a": 1}]])
async def test_comment_passes_input_through(call_node: CallNode, data: Any) -> None:
    result = await call_node("comment", {"commentText": "{{name}}"}, data)
    assert result["outputData"] == data
