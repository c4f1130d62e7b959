"""Strict JSON for every stored column (no NaN, no Python-only types) and UTC timestamps."""

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any


def _time_text(value: dt.timedelta) -> str:
    """A duration as MySQL writes a TIME (PyMySQL gives a timedelta): `[-]HH:MM:SS[.ffffff]`."""
    micros = abs(value) // dt.timedelta(microseconds=1)
    seconds, micro = divmod(micros, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    text = f"{'-' if value < dt.timedelta(0) else ''}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return text + (f".{micro:06d}" if micro else "")


def _bytes_text(raw: bytes) -> str:
    """Printable UTF-8 as text, anything else (binary, control characters) as base64."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if all(c.isprintable() or c in "\t\r\n" for c in text):
            return text
    return base64.b64encode(raw).decode("ascii")


def json_value(value: Any) -> Any:
    """The one coercion of driver values to JSON: Decimal → int/float, datetime/date/time → ISO
    text, timedelta → `[-]HH:MM:SS[.ffffff]`, bytes → text (base64 unless printable UTF-8),
    sets → sorted lists, UUID → text, NaN/±Infinity (float or Decimal) → None. Any other value is
    returned as it is (containers are not walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _time_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _bytes_text(bytes(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    return value


def _default(value: Any) -> Any:
    coerced = json_value(value)
    return str(value) if coerced is value else coerced


def _sanitize(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    return value


def dump_json(value: Any) -> str:
    """Serialize to strict JSON: NaN/Infinity become null, other values as `json_value` says."""
    try:
        return json.dumps(value, allow_nan=False, default=_default, ensure_ascii=False)
    except ValueError:
        return json.dumps(_sanitize(value), allow_nan=False, default=_default, ensure_ascii=False)


def iso_ms(moment: dt.datetime) -> str:
    """`moment` in UTC as ISO-8601 with milliseconds and `Z` (contract Decision 7); a naive
    datetime is taken as UTC."""
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_iso() -> str:
    """UTC now as ISO-8601 with milliseconds and `Z`."""
    return iso_ms(dt.datetime.now(dt.UTC))


def load_json_column(text: str | None) -> Any:
    """A stored JSON column decoded: None stays None, text that is not JSON is returned as is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
