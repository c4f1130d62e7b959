"""jsonutil: the one coercion of driver values, strict JSON text and ISO-millisecond timestamps."""

import datetime as dt
import json
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest

from jsonutil import dump_json, iso_ms, json_value, load_json_column, now_iso


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("NaN"), None),
        (Decimal("Infinity"), None),
        (Decimal("2.50"), 2.5),
        (float("-inf"), None),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (b"a\x00b", "YQBi"),
        ({3, "a"}, None),  # unsortable: a list in any order
        ((1, 2), (1, 2)),
        ({"k": Decimal("1")}, {"k": Decimal("1")}),  # containers are not walked
    ],
)
def test_json_value_coerces_one_value(value: Any, expected: Any) -> None:
    result = json_value(value)
    if isinstance(value, set) and expected is None:
        assert sorted(map(str, result)) == ["3", "a"]
    else:
        assert result == expected


def test_dump_json_uses_the_same_coercion_inside_containers() -> None:
    value = {
        "price": Decimal("12.50"),
        "bad": Decimal("NaN"),
        "huge": Decimal("Infinity"),
        "time": dt.timedelta(hours=1, minutes=30),
        "blob": b"\xff\x00",
        "tags": {"b", "a"},
        "f": float("nan"),
        "other": object,
    }
    decoded = json.loads(dump_json(value))
    assert {k: v for k, v in decoded.items() if k != "other"} == {
        "price": 12.5,
        "bad": None,
        "huge": None,
        "time": "01:30:00",
        "blob": "/wA=",
        "tags": ["a", "b"],
        "f": None,
    }
    assert decoded["other"] == str(object)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (dt.datetime(2024, 3, 1, 8, 30, 15, 250_999, tzinfo=dt.UTC), "2024-03-01T08:30:15.250Z"),
        (dt.datetime(2024, 3, 1, 8, 30), "2024-03-01T08:30:00.000Z"),  # naive = UTC
        (
            dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "2024-03-01T08:30:00.000Z",
        ),
    ],
)
def test_iso_ms(moment: dt.datetime, expected: str) -> None:
    assert iso_ms(moment) == expected


def test_now_iso_is_utc_with_milliseconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now_iso())


@pytest.mark.parametrize(
    ("text", "expected"), [(None, None), ('{"a": 1}', {"a": 1}), ("not json", "not json")]
)
def test_load_json_column(text: str | None, expected: Any) -> None:
    assert load_json_column(text) == expected
