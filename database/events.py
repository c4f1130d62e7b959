"""Execution events as every store writes them: the event types, each event's JSON, the capped
previews of outputs, and the stored row. Pure (no database): the SQL and in-memory stores build
events with the same functions, in the same transaction as the change each one reports.

An event is built in two steps. Outside the transaction, a `Draft` holds what the operation
itself knows (the type and, for nodes and ends, their encoded members: previews are computed
there, off the write lock). Inside it, `event_row` adds what the store reads under its lock
(workflow, organization, progress) and the commit's timestamp. The id is the store's; `data` is
stored without it and `with_id` puts it first when the event is read.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from database.interfaces import Event, LogRow, Row, RunEnd
from jsonutil import dump_json
from states import ExecutionStatus, NodeStatus

QUEUED = "execution.queued"
STARTED = "execution.started"
RESUMED = "execution.resumed"
COMPLETED = "execution.completed"
FAILED = "execution.failed"
CANCELLED = "execution.cancelled"
NODE_STARTED = "node.started"
NODE_COMPLETED = "node.completed"
NODE_FAILED = "node.failed"
NODE_SKIPPED = "node.skipped"
EVENT_TYPES = (
    QUEUED,
    STARTED,
    RESUMED,
    NODE_STARTED,
    NODE_COMPLETED,
    NODE_FAILED,
    NODE_SKIPPED,
    COMPLETED,
    FAILED,
    CANCELLED,
)
TERMINAL_EVENT_TYPES = frozenset({COMPLETED, FAILED, CANCELLED})
"""The last event of an execution's stream."""
PREVIEW_MAX_BYTES = 2048
"""An output preview or final output summary, encoded as JSON (UTF-8), is at most this long."""
ERROR_MAX_CHARS = 2000
SUMMARY_SOURCE_MAX_BYTES = 1024 * 1024
"""Final outputs larger than this are summarised by their size only (no parse at the end)."""
ADVISORY_LOCK = 0x776F735F657665
"""PostgreSQL: the transaction-level advisory lock every event writer takes before inserting
(`pg_advisory_xact_lock`), so event ids commit in id order ("wos_eve")."""
NOTIFY_CHANNEL = "wos_events"
"""PostgreSQL: the channel each event-writing transaction notifies with its highest id."""

COUNT_COLUMNS = ("totalNodes", "completedNodes", "failedNodes", "skippedNodes")
"""The `wos_executions` counters an event's `progress` is computed from (`Counts.of`)."""
_NODE_TYPES = {
    NodeStatus.RUNNING: NODE_STARTED,
    NodeStatus.COMPLETED: NODE_COMPLETED,
    NodeStatus.ERROR: NODE_FAILED,
    NodeStatus.SKIPPED: NODE_SKIPPED,
}
_END_TYPES = {
    ExecutionStatus.COMPLETED: COMPLETED,
    ExecutionStatus.FAILED: FAILED,
    ExecutionStatus.CANCELLED: CANCELLED,
}


@dataclass(frozen=True, slots=True)
class Draft:
    """An event before the store gives it its execution's state, a timestamp and an id."""

    type: str
    members: str = ""
    """Encoded JSON members of this event's own fields (`"nodeId":"a",…`), or empty."""


@dataclass(frozen=True, slots=True)
class Counts:
    """The counters `progress` is computed from (the status endpoint's, contract §5.3)."""

    total: int | None = None
    completed: int = 0
    failed: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, row: Mapping[Any, Any], counts: dict[str, int] | None = None) -> "Counts":
        """From a row holding `wos_executions`' counters (None where there is none), with a
        checkpoint's new counts (`Checkpoint.counts`) winning when given."""
        values = counts or row
        return cls(
            row.get("totalNodes"),
            values.get("completedNodes") or 0,
            values.get("failedNodes") or 0,
            values.get("skippedNodes") or 0,
        )


def progress(counts: Counts, *, settled: bool) -> dict[str, int]:
    """The status endpoint's `progress` object (api.executions.progress_of: settled nodes over
    all nodes, rounded down, capped at 100; a settled execution without nodes is at 100)."""
    total = counts.total or 0
    finished = counts.completed + counts.failed + counts.skipped
    percentage = 100 if (settled and total == 0) else (finished * 100 // total if total else 0)
    return {
        "totalNodes": total,
        "completedNodes": counts.completed,
        "failedNodes": counts.failed,
        "skippedNodes": counts.skipped,
        "percentage": min(percentage, 100),
    }


def _members(fields: dict[str, Any]) -> str:
    return dump_json(fields)[1:-1]


def _encoded_size(value: Any) -> int:
    return len(dump_json(value).encode())


def _text(value: str | None) -> str:
    """A JSON string (or null), as `dump_json` writes it."""
    return "null" if value is None else encode_basestring(value)


def preview_json(value: Any, limit: int = PREVIEW_MAX_BYTES) -> str:
    """`preview(value)` encoded (the value's own encoding when it fits: encoded once)."""
    text = dump_json(value)
    if len(text) <= limit // 4 or len(text.encode()) <= limit:
        return text
    return dump_json(_shrunk(value, text, limit))


def preview(value: Any, limit: int = PREVIEW_MAX_BYTES) -> Any:
    """`value` when its JSON fits in `limit` bytes, else `{truncated, originalBytes, preview}`
    (the list's leading items or the object's leading members that fit, or the text's start)."""
    text = dump_json(value)
    if len(text.encode()) <= limit:
        return value
    return _shrunk(value, text, limit)


def _shrunk(value: Any, text: str, limit: int) -> dict[str, Any]:
    size = len(text.encode())
    budget = limit - 160  # the wrapper's own members
    head: Any = None
    if isinstance(value, list):
        head = _leading(value, budget)
    elif isinstance(value, dict):
        head = dict(_leading(list(value.items()), budget, pairs=True))
    out: dict[str, Any] = {"truncated": True, "originalBytes": size}
    if isinstance(value, list):
        out["items"] = len(value)
    if head is None:
        head = text[:budget]
    out["preview"] = head
    while isinstance(out["preview"], str) and _encoded_size(out) > limit:
        out["preview"] = out["preview"][: len(out["preview"]) // 2]
    if _encoded_size(out) > limit:  # items or members that escape to more than they looked
        out["preview"] = text[: budget // 8]
    return out


def _leading(items: list[Any], budget: int, *, pairs: bool = False) -> list[Any]:
    """The leading items (or (key, value) pairs) whose JSON fits in `budget` bytes together."""
    kept: list[Any] = []
    used = 0
    for item in items:
        size = _encoded_size(list(item) if pairs else item) + 1
        if used + size > budget:
            break
        kept.append(item)
        used += size
    return kept


def _node_output(output_json: str | None) -> Any:
    """The node's output (`outputData` of its logged envelope, else the logged value)."""
    if output_json is None:
        return None
    try:
        logged = json.loads(output_json)
    except ValueError:
        return output_json
    if isinstance(logged, dict) and "outputData" in logged:
        return logged["outputData"]
    return logged


def node_drafts(rows: list[LogRow]) -> list[Draft]:
    """One event per log row of a checkpoint, in the rows' order. Built as text (this runs for
    every node, twice: encoding the members one by one costs a third of a dict's dump)."""
    drafts = []
    for row in rows:
        members = (
            f'"nodeId":{_text(row.node_id)},"nodeType":{_text(row.node_type)},'
            f'"nodeLabel":{_text(row.node_label)}'
        )
        if row.status != NodeStatus.RUNNING:
            attempts = row.attempts or (0 if row.status == NodeStatus.SKIPPED else 1)
            members += f',"durationMs":{int(row.duration_ms or 0)},"attempts":{int(attempts)}'
        if row.status == NodeStatus.COMPLETED:
            members += f',"output":{preview_json(_node_output(row.output_json))}'
        elif row.status == NodeStatus.ERROR:
            members += f',"error":{_text((row.error or "")[:ERROR_MAX_CHARS])}'
        drafts.append(Draft(_NODE_TYPES[row.status], members))
    return drafts


def end_draft(end: RunEnd) -> Draft:
    """The terminal event of `QueueStore.finish`: the error, or a summary of the final output."""
    if end.status != ExecutionStatus.COMPLETED:
        error = (end.error or "")[:ERROR_MAX_CHARS]
        return Draft(_END_TYPES[end.status], _members({"error": error}))
    return Draft(COMPLETED, _members({"output": output_summary(end.node_results)}))


def cancel_draft(error: str) -> Draft:
    return Draft(CANCELLED, _members({"error": error[:ERROR_MAX_CHARS]}))


def output_summary(node_results: str | None) -> Any:
    """A capped summary of the final output: the outputs of the workflow's output nodes (those
    marked `isFinal`), else of every node, by node id, previewed to `PREVIEW_MAX_BYTES`."""
    if node_results is None:
        return None
    if len(node_results) > SUMMARY_SOURCE_MAX_BYTES:
        return {"truncated": True, "originalBytes": len(node_results.encode())}
    try:
        results = json.loads(node_results)
    except ValueError:
        return preview(node_results)
    if not isinstance(results, dict):
        return preview(results)
    envelopes = {k: v for k, v in results.items() if isinstance(v, dict)}
    final = {k: v for k, v in envelopes.items() if v.get("isFinal")} or envelopes
    return preview({k: v.get("outputData") for k, v in final.items()})


def event_row(
    draft: Draft,
    *,
    execution_id: str,
    workflow_id: str | None,
    organization_id: str | None,
    counts: Counts,
    now: str,
) -> Row:
    """The stored row of an event: `data` is its JSON without `id`."""
    p = progress(counts, settled=draft.type in TERMINAL_EVENT_TYPES)
    data = (  # as text: built for every event of every node (the type and time need no escape)
        f'{{"type":"{draft.type}","executionId":{_text(execution_id)},'
        f'"workflowId":{_text(workflow_id)},"timestamp":"{now}","progress":'
        f'{{"totalNodes":{p["totalNodes"]},"completedNodes":{p["completedNodes"]},'
        f'"failedNodes":{p["failedNodes"]},"skippedNodes":{p["skippedNodes"]},'
        f'"percentage":{p["percentage"]}}}'
    )
    data += f",{draft.members}}}" if draft.members else "}"
    return {
        "executionId": execution_id,
        "workflowId": workflow_id,
        "organizationId": organization_id,
        "type": draft.type,
        "createdAt": now,
        "data": data,
    }


def with_id(event_id: int, data: str) -> str:
    """The stored `data` with `"id"` as its first member."""
    return f'{{"id":{event_id},{data[1:]}'


def to_event(event_id: int, row: Mapping[Any, Any]) -> Event:
    """The `Event` of a stored row (`event_row`'s keys) and its id."""
    return Event(
        event_id,
        row["executionId"],
        row["workflowId"],
        row["organizationId"],
        row["type"],
        with_id(event_id, row["data"]),
    )
