"""Ids the store hands out: execution ids and time-ordered row ids (and the log rows that carry
them, as every backend stores them)."""

import itertools
import secrets
import time

from database.interfaces import LogRow, Row

_log_ids = itertools.count()


def new_execution_id() -> str:
    return secrets.token_hex(8)


def new_log_id() -> str:
    """16 hex chars sorting in creation order within a process (tie-break for equal timestamps)."""
    return f"{(time.time_ns() >> 12) & 0xFFFFFFFFFFFF:012x}{next(_log_ids) & 0xFFFF:04x}"


def new_row_id() -> str:
    """A random 16 hex char id (properties, record values)."""
    return secrets.token_hex(8)


def log_row(execution_id: str, r: LogRow, now: str) -> Row:
    """The `execution_logs` row of `r`, with a new time-ordered id."""
    return {
        "id": new_log_id(),
        "executionId": execution_id,
        "nodeId": r.node_id,
        "nodeType": r.node_type,
        "nodeLabel": r.node_label,
        "status": str(r.status),
        "inputData": r.input_json,
        "outputData": r.output_json,
        "error": r.error,
        "duration": r.duration_ms,
        "timestamp": now,
    }
