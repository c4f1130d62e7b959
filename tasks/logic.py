"""Routing and combining node types: condition, join, splitColumns."""

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models import EdgeDef
from tasks.context import RunContext
from tasks.cpu import run_cpu
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import js_str, records, to_number

Check = Callable[[Any, str], bool]


def _numeric(op: Callable[[float, float], bool]) -> Check:
    def check(value: Any, target: str) -> bool:
        a, b = to_number(value), to_number(target)
        return a is not None and b is not None and op(a, b)

    return check


def _text(op: Callable[[str, str], bool]) -> Check:
    def check(value: Any, target: str) -> bool:
        return value is not None and op(js_str(value).lower(), (target or "").lower())

    return check


def _empty(value: Any, _target: str) -> bool:
    return value is None or value == ""


OPERATORS: dict[str, Check] = {
    "equals": lambda v, t: js_str(v) == (t or ""),
    "notEquals": lambda v, t: js_str(v) != (t or ""),
    "greaterThan": _numeric(lambda a, b: a > b),
    "lessThan": _numeric(lambda a, b: a < b),
    "greaterOrEqual": _numeric(lambda a, b: a >= b),
    "lessOrEqual": _numeric(lambda a, b: a <= b),
    "contains": _text(lambda a, b: b in a),
    "notContains": lambda v, t: not _text(lambda a, b: b in a)(v, t),
    "startsWith": _text(str.startswith),
    "endsWith": _text(str.endswith),
    "isEmpty": _empty,
    "isNotEmpty": lambda v, t: not _empty(v, t),
}
_SNAKE = {
    "not_equals": "notEquals",
    "greater_than": "greaterThan",
    "less_than": "lessThan",
    "greater_or_equal": "greaterOrEqual",
    "less_or_equal": "lessOrEqual",
    "not_contains": "notContains",
    "starts_with": "startsWith",
    "ends_with": "endsWith",
    "is_empty": "isEmpty",
    "is_not_empty": "isNotEmpty",
}


class Rule(BaseModel):
    model_config = ConfigDict(extra="ignore")

    field: str | None = None
    operator: str = "equals"
    value: Any = ""


class ConditionConfig(NodeConfig):
    conditionField: str | None = None
    conditionOperator: str = "equals"
    conditionValue: Any = ""
    processingMode: Literal["batch", "perRow"] = "batch"
    additionalConditions: list[Rule] = Field(default_factory=list)
    logicalOperator: Literal["AND", "OR"] = "AND"

    def rules(self) -> list[Rule]:
        first = Rule(
            field=self.conditionField,
            operator=self.conditionOperator or "equals",
            value=self.conditionValue,
        )
        return [first, *(r for r in self.additionalConditions if r.field)]


def matcher(config: ConditionConfig) -> Callable[[Any], bool]:
    """The verdict of the config's rules on one record (AND: all of them, OR: any)."""
    rules = [
        (
            rule.field,
            OPERATORS.get(_SNAKE.get(rule.operator, rule.operator), OPERATORS["equals"]),
            rule.value if isinstance(rule.value, str) else js_str(rule.value),
        )
        for rule in config.rules()
    ]
    combine = all if config.logicalOperator == "AND" else any

    def matches(record: Any) -> bool:
        mapping = record if isinstance(record, dict) else None
        return combine(
            check(mapping.get(field) if mapping is not None and field else None, target)
            for field, check, target in rules
        )

    return matches


def _partition(rows: list[Any], matches: Callable[[Any], bool]) -> tuple[list[Any], list[Any]]:
    true_rows: list[Any] = []
    false_rows: list[Any] = []
    for row in rows:
        (true_rows if matches(row) else false_rows).append(row)
    return true_rows, false_rows


def condition_route(result: Envelope, branch: str | None) -> tuple[bool, Any]:
    """Batch: edges marked "false" are taken iff the verdict is false, the others iff it is true;
    they carry the condition's input. perRow: every edge is taken, "false" edges carry the
    false records, the others the true ones."""
    if "trueRecords" in result or "falseRecords" in result:
        return True, result.get("falseRecords" if branch == "false" else "trueRecords", [])
    passed = bool(result.get("conditionResult"))
    return passed != (branch == "false"), result.get("outputData")


@node("condition", config=ConditionConfig, route=condition_route)
async def condition(config: ConditionConfig, data: Any, ctx: RunContext) -> Envelope:
    """Batch: one verdict on the first record. perRow: split the records into true/false."""
    rows, matches = records(data), matcher(config)
    if config.processingMode == "perRow":
        true_rows, false_rows = await run_cpu(_partition, rows, matches, size=len(rows))
        return envelope(
            f"{len(true_rows)} of {len(rows)} records matched",
            true_rows,
            conditionResult=bool(true_rows),
            trueRecords=true_rows,
            falseRecords=false_rows,
        )
    result = bool(rows) and matches(rows[0])
    return envelope(f"Condition evaluated to {js_str(result)}", data, conditionResult=result)


class JoinConfig(NodeConfig):
    joinStrategy: Literal["concat", "mergeByKey"] = "concat"
    joinType: Literal["inner", "outer"] = "inner"
    joinKey: str | None = None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _strict_key(row: dict[str, Any], key: str) -> tuple[str, Any] | None:
    """A hashable identity of `row[key]` for JS `===` on JSON values: `"1"` is not `1`, `1` is
    `1.0`, objects and arrays only equal themselves; None (equal to nothing) when the row has
    no such key or it holds NaN."""
    if key not in row:
        return None
    value = row[key]
    if isinstance(value, dict | list):
        return ("object", id(value))
    if isinstance(value, float) and value != value:
        return None
    return (_kind(value), value)


def _columns(rows: list[Any]) -> list[str]:
    return list(rows[0]) if rows and isinstance(rows[0], dict) else []


def merge_by_key(a: list[Any], b: list[Any], key: str, outer: bool) -> list[dict[str, Any]]:
    """FE semantics: each A row takes the first B row whose key is `===` its own; B columns that
    collide with A's first row become `B_<name>`; every row is rebuilt with A's first-row columns,
    then B's, missing values as "". Linear: B is indexed by key once."""
    a_cols = _columns(a)
    in_a = set(a_cols)
    rename = {c: (f"B_{c}" if c in in_a else c) for c in _columns(b) if c != key}
    b_rows: list[dict[str, Any]] = [r for r in b if isinstance(r, dict)]
    first_b: dict[tuple[str, Any], dict[str, Any]] = {}
    for r in b_rows:
        if (k := _strict_key(r, key)) is not None:
            first_b.setdefault(k, r)
    merged: list[dict[str, Any]] = []
    a_keys: set[tuple[str, Any]] = set()
    for row in (r for r in a if isinstance(r, dict)):
        k = _strict_key(row, key)
        if k is not None:
            a_keys.add(k)
        match = first_b.get(k) if k is not None else None
        if match is None:
            if outer:
                merged.append(dict(row))
            continue
        extra = {
            rename.get(c, f"B_{c}" if c in in_a else c): v for c, v in match.items() if c != key
        }
        merged.append({**row, **extra})
    if outer:  # B rows whose key no A row has (a matched B row's key is always in a_keys)
        for row in b_rows:
            k = _strict_key(row, key)
            if k is None or k not in a_keys:
                merged.append(
                    {key: row.get(key), **{rename.get(c, c): v for c, v in row.items() if c != key}}
                )
    columns = a_cols + [c for c in rename.values() if c not in in_a]
    if key not in columns:
        columns.insert(0, key)
    return [{c: r.get(c, "") for c in columns} for r in merged]


def _concat(payloads: list[Any]) -> Any:
    if len(payloads) == 1:
        return payloads[0]
    out: list[Any] = []
    for p in payloads:
        out.extend(p if isinstance(p, list) else [p])
    return out


def join_inputs(active: list[tuple[EdgeDef, Any]]) -> tuple[bool, Any, str]:
    """Input port "B" feeds side B, any other (or none) side A; the join is skipped unless both
    sides received data."""
    a = [p for e, p in active if (e.inputPort or "A") != "B"]
    b = [p for e, p in active if e.inputPort == "B"]
    if not a or not b:
        return False, None, f"Skipped: join input {'A' if not a else 'B'} received no data"
    return True, {"A": _concat(a), "B": _concat(b)}, ""


@node("join", config=JoinConfig, gather=join_inputs)
async def join(config: JoinConfig, data: Any, ctx: RunContext) -> Envelope:
    payload = data if isinstance(data, dict) else {}
    a, b = records(payload.get("A")), records(payload.get("B"))
    if config.joinStrategy == "mergeByKey" and config.joinKey:
        outer = config.joinType == "outer"
        rows = await run_cpu(merge_by_key, a, b, config.joinKey, outer, size=len(a) + len(b))
        how = f"{config.joinType} merge on {config.joinKey}"
    else:
        rows, how = a + b, "concatenation"
    return envelope(f"Joined {len(a)} + {len(b)} rows by {how}: {len(rows)} rows", rows)


def split_rows(
    data: list[Any], cols_a: list[str], cols_b: list[str]
) -> tuple[list[Any], list[Any]]:
    """Each record's `cols_a` and `cols_b` (the record itself and `{}` when neither is set)."""
    if not cols_a and not cols_b:
        return data, [{} for _ in data]

    def pick(row: Any, cols: list[str]) -> dict[str, Any]:
        return {c: row[c] for c in cols if c in row} if isinstance(row, dict) else {}

    return [pick(r, cols_a) for r in data], [pick(r, cols_b) for r in data]


class SplitColumnsConfig(NodeConfig):
    columnsOutputA: list[str] = Field(default_factory=list)
    columnsOutputB: list[str] = Field(default_factory=list)


def split_route(result: Envelope, branch: str | None) -> tuple[bool, Any]:
    """Every edge is taken: edges marked "B" carry output B, the others output A."""
    if "outputA" not in result:  # input was not a list: passed through
        return True, result.get("outputData")
    return True, result.get("outputB" if branch == "B" else "outputA")


@node("splitColumns", config=SplitColumnsConfig, route=split_route)
async def split_columns(config: SplitColumnsConfig, data: Any, ctx: RunContext) -> Envelope:
    """Output A feeds edges marked "A" (and unmarked ones), output B edges marked "B"."""
    if not isinstance(data, list):
        return envelope("Input is not a list; passed through", data)
    out_a, out_b = await run_cpu(
        split_rows, data, config.columnsOutputA, config.columnsOutputB, size=len(data)
    )
    return envelope(f"Split {len(data)} rows into A and B", out_a, outputA=out_a, outputB=out_b)
