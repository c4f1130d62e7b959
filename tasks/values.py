"""JavaScript-compatible rendering and number parsing, so comparisons and templates match the
editor's expectations (`true` not `True`, `85` not `85.0`)."""

import json
import math
import re
from decimal import Decimal
from typing import Any

from errors import NodeConfigError, NodeExecutionError

# one way to match each digit (an optional fraction after the integer digits), so a long run of
# digits followed by a letter fails in linear time; `\d+\.?\d*` tried every split of the run
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}", re.ASCII)  # JS `\w`: ASCII letters, digits, `_`
RENDER_LIMIT = 64 * 1024 * 1024
"""Characters one rendered template may have unless the caller says otherwise (the default
MAX_NODE_OUTPUT_BYTES): `{{a}}` 200,000 times over a 1 MB value must not build 200 GB."""


def _js_number(value: float) -> str:
    """ECMAScript Number::toString: shortest round-trip digits, exponent below 1e-6 / from 1e21."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    parts = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in parts.digits)
    k, n = len(digits), int(parts.exponent) + len(digits)  # value = 0.<digits> × 10^n
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        body = f"{mantissa}e{'+' if n >= 1 else '-'}{abs(n - 1)}"
    return ("-" if value < 0 else "") + body


def _js_json(value: Any) -> str:
    """Compact JSON as `JSON.stringify` writes it (numbers rendered the JS way, NaN → null)."""
    if isinstance(value, float):
        return _js_number(value) if math.isfinite(value) else "null"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{json.dumps(str(k), ensure_ascii=False)}:{_js_json(v)}" for k, v in value.items()
            )
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(_js_json(v) for v in value) + "]"
    if value is None or isinstance(value, bool | int | str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)


def js_str(value: Any) -> str:
    """`String(value)` as JavaScript renders it (objects and lists as compact JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, dict | list | tuple):
        return _js_json(value)
    return str(value)


def to_number(value: Any) -> float | None:
    """A finite number from a number or a plain decimal string; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range is no finite number
            return None
    if isinstance(value, str) and _NUMBER.fullmatch(text := value.strip()):
        number = float(text)
        return number if math.isfinite(number) else None
    return None


def parse_number_string(value: str) -> int | float | str:
    """ "85" → 85, "1.5" → 1.5; anything that is not a plain finite decimal stays a string."""
    number = to_number(value)
    if number is None:
        return value
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def parse_port(value: str | int, key: str) -> int:
    """A TCP port from a node's config (a number or numeric text); NodeConfigError naming `key`
    when it is not a whole number from 1 to 65535."""
    try:
        port = int(str(value).strip())
    except ValueError:
        raise NodeConfigError(f"{key} must be a number (got {value!r})") from None
    if not 0 < port < 65536:
        raise NodeConfigError(f"{key} must be between 1 and 65535 (got {port})")
    return port


def json_text(value: Any, error: str) -> Any:
    """A config value the editor may store either decoded or as JSON text: text is decoded
    (NodeConfigError(`error`) when it is not JSON), anything else is returned as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise NodeConfigError(error) from None


class _Budget:
    """The length a template's rendering has reached; a NodeExecutionError past `limit`."""

    def __init__(self, text: str, limit: int) -> None:
        self.size, self.limit = len(text), limit

    def fill(self, match: re.Match[str], value: str) -> str:
        self.size += len(value) - (match.end() - match.start())
        if self.size > self.limit:
            raise NodeExecutionError(
                f"A template renders to more than {self.limit:,} characters, over the limit "
                "(MAX_NODE_OUTPUT_BYTES)"
            )
        return value


def render_template(text: str, record: Any, limit: int = RENDER_LIMIT) -> str:
    """Replace each `{{field}}` by the record's value; unknown placeholders stay as they are.
    A rendering longer than `limit` characters is a NodeExecutionError naming the limit."""
    if not isinstance(record, dict):
        return text
    budget = _Budget(text, limit)

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        return budget.fill(match, js_str(record[key])) if key in record else match.group(0)

    return _PLACEHOLDER.sub(sub, text)


_FIELD = re.compile(r"\{\{([^{}\n]+)\}\}|\{([^{}\n]+)\}")


def render_fields(text: str, record: Any, limit: int = RENDER_LIMIT) -> str:
    """Replace `{{field}}` and the editor's single-brace `{field}` by the record's value (names
    may contain spaces; surrounding blanks are ignored). Unknown names stay as they are, so JSON
    or other braces in the text survive. Longer than `limit` characters: a NodeExecutionError."""
    if not isinstance(record, dict):
        return text
    budget = _Budget(text, limit)

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        for key in (name, name.strip()):
            if key in record:
                return budget.fill(match, js_str(record[key]))
        return match.group(0)

    return _FIELD.sub(sub, text)


def first_record(data: Any) -> Any:
    """The record templates read: the first element of a list, else the input itself."""
    if isinstance(data, list):
        return data[0] if data else None
    return data


def records(data: Any) -> list[Any]:
    """Tabular view of an input: a list as is, an object as one record, None as no records."""
    if data is None:
        return []
    return data if isinstance(data, list) else [data]
