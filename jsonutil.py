"""Strict JSON for every stored column (no NaN, no Python-only types) and UTC timestamps."""

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _sanitize(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    return value


def dump_json(value: Any) -> str:
    """Serialize to strict JSON: NaN/Infinity become null, Decimal/datetime/bytes are converted."""
    try:
        return json.dumps(value, allow_nan=False, default=_default, ensure_ascii=False)
    except ValueError:
        return json.dumps(_sanitize(value), allow_nan=False, default=_default, ensure_ascii=False)


def now_iso() -> str:
    """UTC now as ISO-8601 with milliseconds and `Z` (contract Decision 7)."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def load_json_column(text: str | None) -> Any:
    """A stored JSON column decoded: None stays None, text that is not JSON is returned as is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
