"""addField handler (contract §4.7, fixture 05) and the JS-compatible value helpers it uses."""

from typing import Any

import pytest

from tasks.values import js_str, parse_number_string, render_template, to_number
from tests.conftest import CallNode

GREETING = {"addFieldName": "greeting", "addFieldValue": "Welcome, {{name}}!"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (  # fixture 05, run A
            [{"name": "Ana", "plan": "pro"}, {"name": "Luis", "plan": "free"}],
            [
                {"name": "Ana", "plan": "pro", "greeting": "Welcome, Ana!"},
                {"name": "Luis", "plan": "free", "greeting": "Welcome, Luis!"},
            ],
        ),
        (  # run B: an object is one record
            {"name": "Eva", "email": "eva@example.com"},
            {"name": "Eva", "email": "eva@example.com", "greeting": "Welcome, Eva!"},
        ),
        ({}, {"greeting": "Welcome, {{name}}!"}),  # run C: unknown placeholder kept
        (None, {"greeting": "Welcome, {{name}}!"}),
        (
            [{"name": None}, {"other": 1}, "scalar"],
            [
                {"name": None, "greeting": "Welcome, null!"},
                {"other": 1, "greeting": "Welcome, {{name}}!"},
                "scalar",
            ],
        ),
        ([], []),
    ],
)
async def test_add_field_templated(call_node: CallNode, data: Any, expected: Any) -> None:
    result = await call_node("addField", GREETING, data)
    assert result["outputData"] == expected


@pytest.mark.parametrize(
    ("config", "data", "expected"),
    [
        (
            {"addFieldName": "status", "addFieldValue": "ALERT"},
            {"temperature": 85},
            {"temperature": 85, "status": "ALERT"},
        ),  # fixture 01
        (
            {"addFieldName": "status", "addFieldValue": "normal"},
            [{"sensor": "S1", "value": 42}],
            [{"sensor": "S1", "value": 42, "status": "normal"}],
        ),  # fixture 03
        ({"fieldName": "src", "fieldValue": "lims"}, {"a": 1}, {"a": 1, "src": "lims"}),
        ({"addFieldName": "", "fieldName": "ai", "addFieldValue": "v"}, {}, {"ai": "v"}),
        ({"addFieldName": "x", "fieldName": "ignored"}, {}, {"x": ""}),
        ({}, {"a": 1}, {"a": 1, "newField": ""}),
        ({"addFieldName": "n", "addFieldValue": 5}, [{"a": 1}], [{"a": 1, "n": 5}]),
        ({"addFieldName": "tags", "addFieldValue": ["a"]}, None, {"tags": ["a"]}),
        ({"addFieldName": "a", "addFieldValue": "new"}, {"a": "old"}, {"a": "new"}),
        (
            {"addFieldName": "s", "addFieldValue": "{{flag}}/{{n}}/{{o}}/{{ñ}}"},
            {"flag": True, "n": 85.0, "o": {"k": [1.0, None]}, "ñ": "x"},
            {
                "flag": True,
                "n": 85.0,
                "o": {"k": [1.0, None]},
                "ñ": "x",
                "s": 'true/85/{"k":[1,null]}/{{ñ}}',
            },
        ),
    ],
)
async def test_add_field_config_and_shapes(
    call_node: CallNode, config: dict[str, Any], data: Any, expected: Any
) -> None:
    result = await call_node("addField", config, data)
    assert result["outputData"] == expected


async def test_add_field_does_not_mutate_input(call_node: CallNode) -> None:
    data = [{"name": "Ana"}]
    await call_node("addField", GREETING, data)
    assert data == [{"name": "Ana"}]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (85, "85"),
        (85.0, "85"),
        (-0.0, "0"),
        (1.5, "1.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (2.5e-8, "2.5e-8"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Infinity"),
        ("text", "text"),
        ({"a": 1, "b": "é"}, '{"a":1,"b":"é"}'),
        ([1, True, None], "[1,true,null]"),
        ({"x": float("nan")}, '{"x":null}'),
    ],
)
def test_js_str(value: Any, expected: str) -> None:
    assert js_str(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        (2.5, 2.5),
        (" 42 ", 42.0),
        ("-1.5e2", -150.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("", None),
        ("abc", None),
        ("0x10", None),
        ("Infinity", None),
        ("1,5", None),
        (True, None),
        (None, None),
        ([1], None),
        (float("inf"), None),
    ],
)
def test_to_number(value: Any, expected: float | None) -> None:
    assert to_number(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("85", 85), ("85.0", 85), ("1.25", 1.25), (" 7 ", 7), ("B-7", "B-7"), ("", "")],
)
def test_parse_number_string(text: str, expected: Any) -> None:
    result = parse_number_string(text)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "record", "expected"),
    [
        ("Hi {{name}}", {"name": "Ana"}, "Hi Ana"),
        ("{{a}}{{a}} {{b}}", {"a": 1}, "11 {{b}}"),
        ("{{ name }}", {"name": "x"}, "{{ name }}"),
        ("{{a-b}}", {"a-b": "x"}, "{{a-b}}"),
        ("{{name}}", ["not", "a", "record"], "{{name}}"),
        ("{{v}}", {"v": None}, "null"),
    ],
)
def test_render_template(text: str, record: Any, expected: str) -> None:
    assert render_template(text, record) == expected
