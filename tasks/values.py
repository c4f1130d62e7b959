"""JavaScript-compatible rendering and number parsing, so comparisons and templates match the
editor's expectations (`true` not `True`, `85` not `85.0`)."""

import json
import math
import re
from typing import Any

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def js_str(value: Any) -> str:
    """`String(value)` as JavaScript renders it (objects and lists as JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def to_number(value: Any) -> float | None:
    """A finite number from a number or a plain decimal string; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value.strip())
        return number if math.isfinite(number) else None
    return None


def parse_number_string(value: str) -> int | float | str:
    """"85" → 85, "1.5" → 1.5; anything that is not a plain finite decimal stays a string."""
    number = to_number(value)
    if number is None:
        return value
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def render_template(text: str, record: Any) -> str:
    """Replace each `{{field}}` by the record's value; unknown placeholders stay as they are."""
    if not isinstance(record, dict):
        return text

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        return js_str(record[key]) if key in record else match.group(0)

    return _PLACEHOLDER.sub(sub, text)


def records(data: Any) -> list[Any]:
    """Tabular view of an input: a list as is, an object as one record, None as no records."""
    if data is None:
        return []
    return data if isinstance(data, list) else [data]
