"""tasks.values helpers shared by node families: port numbers and JSON text in configs."""

from typing import Any

import pytest

from errors import NodeConfigError
from tasks.values import json_text, parse_port


@pytest.mark.parametrize(("value", "expected"), [("3306", 3306), (" 25 ", 25), (65535, 65535)])
def test_parse_port(value: str | int, expected: int) -> None:
    assert parse_port(value, "somePort") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("smtp", "somePort must be a number (got 'smtp')"),
        ("25.5", "somePort must be a number (got '25.5')"),
        ("", "somePort must be a number (got '')"),
        (0, "somePort must be between 1 and 65535 (got 0)"),
        ("70000", "somePort must be between 1 and 65535 (got 70000)"),
        (-1, "somePort must be between 1 and 65535 (got -1)"),
    ],
)
def test_parse_port_refuses(value: str | int, message: str) -> None:
    with pytest.raises(NodeConfigError) as info:
        parse_port(value, "somePort")
    assert str(info.value) == message


@pytest.mark.parametrize(("value", "expected"), [("[1, 2]", [1, 2]), ({"a": 1}, {"a": 1})])
def test_json_text_decodes_text_only(value: Any, expected: Any) -> None:
    assert json_text(value, "bad") == expected


def test_json_text_refuses_text_that_is_not_json() -> None:
    with pytest.raises(NodeConfigError, match="^widget must be JSON$"):
        json_text("{oops", "widget must be JSON")
