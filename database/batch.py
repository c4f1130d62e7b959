"""Group commit: state changes of running executions that arrive while a batch is being written go
into the next transaction together (one commit, executemany with statements compiled once).

`GroupCommit` queues the operations and resolves each waiter; `apply_batch` writes one batch in
one transaction. A batch that fails on a row (a constraint, a bad value) is retried one operation
per transaction, so only the waiter of the failing operation gets the error (an unrelated execution
is never failed by another's); any other error (a lock timeout, a lost connection) fails the whole
batch at once, since replaying it would only repeat the wait.
"""

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from database.events import COUNT_COLUMNS, Counts, Draft, event_row
from database.ids import log_row
from database.interfaces import Checkpoint, Row, RunEnd, RunStart
from database.listen import NOTIFY_QUEUE
from database.schema import executions, logs, runs
from database.sql_claims import assign_turns
from database.sql_events import insert_events
from jsonutil import now_iso
from states import (
    ACTIVE_STATUSES,
    CHECKPOINT_STATUSES,
    SETTLED_NODE_STATUSES,
    ExecutionStatus,
    RunState,
)

logger = logging.getLogger(__name__)

BATCH_MAX = 500
INLINE_BATCH_MAX = 4
"""Batches up to this size may be written on the event loop (`SqlStore._write_now`)."""
_LIVE = {"start": ACTIVE_STATUSES, "checkpoint": CHECKPOINT_STATUSES, "finish": ACTIVE_STATUSES}
"""The statuses in which each kind of operation still writes the execution row."""
INTEGRITY_ERRORS = (sa.exc.IntegrityError, sqlite3.IntegrityError)
"""A constraint failed (sqlite3's own from the compiled SQLite path, `_execute_many`)."""
ROW_ERRORS = (*INTEGRITY_ERRORS, sa.exc.DataError, sqlite3.DataError, UnicodeEncodeError)
"""Errors of one operation's rows: a failing batch is retried one operation at a time."""


@dataclass
class Op:
    kind: str
    """create, start, checkpoint or finish."""
    execution_id: str
    params: dict[str, Any] | RunStart | Checkpoint | RunEnd
    """The rows (create), `RunStart` (start), `Checkpoint` (checkpoint) or `RunEnd` (finish)."""
    drafts: list[Draft] = field(default_factory=list)
    """The events it publishes when it applies (`database.events`)."""
    owner: str | None = None
    """The worker whose lease the write is fenced by: nothing of the operation is written (and
    it answers False) unless the run's `leaseOwner` is still this one. None: not fenced."""
    future: "asyncio.Future[bool]" = field(default=None, repr=False)  # type: ignore[arg-type]


class GroupCommit:
    """The queue of pending operations; `commit` writes a batch in one transaction and returns
    one result per operation (is the execution still live?)."""

    def __init__(self, commit: Callable[[list[Op]], Awaitable[list[bool]]]) -> None:
        self._commit = commit
        self._queue: list[Op] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, op: Op) -> bool:
        op.future = asyncio.get_running_loop().create_future()
        self._queue.append(op)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await op.future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:BATCH_MAX], self._queue[BATCH_MAX:]
            try:
                results = await self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - resolved per waiter below
                if len(batch) == 1 or not isinstance(exc, ROW_ERRORS):
                    for op in batch:
                        _resolve(op, exc)
                    continue
                logger.warning(
                    "group commit of %d operations failed (%s); retrying one by one",
                    len(batch),
                    type(exc).__name__,
                    extra={"action": "group_commit_retry"},
                )
                await self._one_by_one(batch)
                continue
            for op, live in zip(batch, results, strict=True):
                _resolve(op, live)

    async def _one_by_one(self, batch: list[Op]) -> None:
        for op in batch:
            try:
                (live,) = await self._commit([op])
            except Exception as exc:  # noqa: BLE001 - this operation's waiter gets the error
                _resolve(op, exc)
            else:
                _resolve(op, live)


def _resolve(op: Op, outcome: bool | BaseException) -> None:
    if op.future.done():
        return
    if isinstance(outcome, BaseException):
        op.future.set_exception(outcome)
    else:
        op.future.set_result(outcome)


def _b(name: str) -> Any:
    return sa.bindparam(name)


_START_EXEC = (
    executions.update()
    .where(executions.c.id == _b("b_id"))
    .values(
        status=ExecutionStatus.RUNNING,
        startedAt=sa.func.coalesce(executions.c.startedAt, _b("b_now")),
    )
)
_START_RUN = (
    runs.update()
    .where(runs.c.executionId == _b("b_id"))
    .values(
        totalNodes=_b("b_total"),
        mode=_b("b_mode"),
        modeReason=_b("b_reason"),
        flowRunId=_b("b_flow"),
    )
)
_CHECKPOINT_EXEC = (
    executions.update()
    .where(executions.c.id == _b("b_id"))
    .values(
        currentNodeId=sa.func.coalesce(_b("b_current"), executions.c.currentNodeId),
        nodeResults=sa.func.coalesce(_b("b_results"), executions.c.nodeResults),
    )
)
_COUNTS_RUN = (
    runs.update()
    .where(runs.c.executionId == _b("b_id"))
    .values(completedNodes=_b("b_done"), failedNodes=_b("b_failed"), skippedNodes=_b("b_skipped"))
)
_FINISH_EXEC = (
    executions.update()
    .where(executions.c.id == _b("b_id"))
    .values(
        status=_b("b_status"),
        error=_b("b_error"),
        completedAt=_b("b_now"),
        nodeResults=sa.func.coalesce(_b("b_results"), executions.c.nodeResults),
        finalOutput=sa.func.coalesce(_b("b_results"), executions.c.finalOutput),
    )
)
_FINISH_RUN = (
    runs.update()
    .where(runs.c.executionId == _b("b_id"))
    .values(state=RunState.DONE, leaseExpiresAt=None)
)


_STATUS_COLUMNS = (
    executions.c.id,
    executions.c.status,
    executions.c.workflowId,
    executions.c.organizationId,
    runs.c.leaseOwner,
    *(runs.c[c] for c in COUNT_COLUMNS),
)
_STATUS = (
    sa.select(*_STATUS_COLUMNS)
    .select_from(executions.outerjoin(runs, runs.c.executionId == executions.c.id))
    .where(executions.c.id.in_(sa.bindparam("ids", expanding=True)))
)
"""What a batch reads first: each execution's status, its lease owner, and what its events
need."""
_STATUS_FOR_UPDATE = (
    sa.select(*_STATUS_COLUMNS)
    .select_from(executions.join(runs, runs.c.executionId == executions.c.id))
    .where(executions.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(executions.c.id)
    .with_for_update(of=(executions, runs))
)
"""PostgreSQL: both rows locked, in id order. The `runs` lock makes a lease fence exact: a
claim taking the run over (`FOR UPDATE SKIP LOCKED`) either committed before (this read sees the
new owner) or skips the row until this batch committed."""
_INSERT_EXEC = executions.insert()
_INSERT_RUN = runs.insert()
_INSERT_LOG = logs.insert()


@functools.lru_cache(maxsize=64)
def _sqlite_statement(
    stmt: Any, keys: tuple[str, ...], dialect: sa.Dialect
) -> tuple[str, tuple[str, ...], dict[str, Any]] | None:
    """The statement compiled once: (SQL, bind names in order, bound defaults), or None when a
    bind needs a type processor (then it goes through SQLAlchemy)."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
    names = tuple(compiled.positiontup or ())
    if compiled._bind_processors or (stmt.is_insert and set(names) != set(keys)):
        return None  # typed binds or column defaults computed in Python: SQLAlchemy's job
    return compiled.string, names, dict(compiled.params)


def _execute_many(conn: sa.Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """SQLite group commits: the rows go straight to the sqlite3 cursor. SQLAlchemy's per-call
    bookkeeping (cache key, parameter processing, execution context) was half the CPU of a
    checkpoint; the SQL is still SQLAlchemy's, compiled once per statement."""
    compiled = _sqlite_statement(stmt, tuple(rows[0]), conn.dialect)
    if compiled is None:
        conn.execute(stmt, rows)
        return
    sql, names, defaults = compiled
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, [tuple(r.get(n, defaults.get(n)) for n in names) for r in rows])
    finally:
        cursor.close()


def apply_batch(
    conn: sa.Connection, batch: list["Op"], *, executemany: bool, lock_rows: bool, notify: bool
) -> list[bool]:
    """One transaction for a batch of create/start/checkpoint/finish operations (at most one per
    execution: each execution awaits its previous operation). The statuses are read first
    under the write lock (row locks on PostgreSQL), so a concurrent cancel is never overwritten.
    An operation fenced by a lease its owner lost (`Op.owner`) writes nothing and answers False.
    Each operation that applies publishes its events in the same transaction (`notify`: as
    PostgreSQL does, `database.sql_events.insert_events`)."""
    run = functools.partial(_execute_many, conn) if executemany else conn.execute
    creates = [op.params for op in batch if isinstance(op.params, dict) and op.kind == "create"]
    if creates:
        run(_INSERT_EXEC, [p["execution"] for p in creates])
        assign_turns(conn, [p["run"] for p in creates])
        run(_INSERT_RUN, [p["run"] for p in creates])
        if notify:  # workers of every machine LISTEN (`database.listen`)
            conn.execute(NOTIFY_QUEUE)
    state: dict[str, Row] = {}
    if ids := [op.execution_id for op in batch if op.kind != "create"]:
        query = _STATUS_FOR_UPDATE if lock_rows else _STATUS
        state = {r["id"]: dict(r) for r in conn.execute(query, {"ids": ids}).mappings()}
    now = now_iso()
    event_rows = [
        event_row(d, **_event_state(op, state), now=now)
        for op in batch
        if op.drafts and (op.kind == "create" or _live(op, state))
        for d in op.drafts
    ]
    params: dict[Any, list[dict[str, Any]]] = {
        stmt: []
        for stmt in (
            _START_EXEC,
            _START_RUN,
            _CHECKPOINT_EXEC,
            _COUNTS_RUN,
            _FINISH_EXEC,
            _FINISH_RUN,
        )
    }
    log_rows: list[dict[str, Any]] = []
    results = []
    for op in batch:
        eid, p = op.execution_id, op.params
        if op.kind == "create":  # inserted above
            results.append(True)
            continue
        live = _live(op, state)
        results.append(live)
        if _fenced(op, state):
            continue
        if isinstance(p, RunStart):
            if live:
                params[_START_EXEC].append({"b_id": eid, "b_now": now})
            params[_START_RUN].append(
                {
                    "b_id": eid,
                    "b_total": p.total_nodes,
                    "b_mode": p.mode,
                    "b_reason": p.mode_reason,
                    "b_flow": p.flow_run_id,
                }
            )
        elif isinstance(p, Checkpoint):
            if live and (p.current_node_id is not None or p.node_results is not None):
                params[_CHECKPOINT_EXEC].append(
                    {"b_id": eid, "b_current": p.current_node_id, "b_results": p.node_results}
                )
            log_rows.extend(
                log_row(eid, r, now) for r in p.rows if live or r.status in SETTLED_NODE_STATUSES
            )
            if counts := p.counts:
                params[_COUNTS_RUN].append(
                    {
                        "b_id": eid,
                        "b_done": counts["completedNodes"],
                        "b_failed": counts["failedNodes"],
                        "b_skipped": counts["skippedNodes"],
                    }
                )
        elif isinstance(p, RunEnd):
            if live:
                params[_FINISH_EXEC].append(
                    {
                        "b_id": eid,
                        "b_status": str(p.status),
                        "b_error": p.error,
                        "b_now": now,
                        "b_results": p.node_results,
                    }
                )
            params[_FINISH_RUN].append({"b_id": eid})
    for stmt, rows in params.items():
        if rows:
            run(stmt, rows)
    if log_rows:
        run(_INSERT_LOG, log_rows)
    insert_events(conn, event_rows, notify=notify, run=run)
    return results


def _live(op: Op, state: dict[str, Row]) -> bool:
    """Does the operation still write the execution row (not cancelled, not ended, its lease
    not taken over)?"""
    if _fenced(op, state):
        return False
    return (state.get(op.execution_id) or {}).get("status") in _LIVE[op.kind]


def _fenced(op: Op, state: dict[str, Row]) -> bool:
    """A worker's write for a run whose lease another worker took over: refused whole."""
    if op.owner is None:
        return False
    return (state.get(op.execution_id) or {}).get("leaseOwner") != op.owner


def _event_state(op: Op, state: dict[str, Row]) -> dict[str, Any]:
    """What `event_row` needs of the operation's execution: a created row's own values, else
    the batch's read, with a start's total and a checkpoint's new counts."""
    if isinstance(op.params, dict):
        row = op.params["execution"]
        return {
            "execution_id": op.execution_id,
            "workflow_id": row["workflowId"],
            "organization_id": row["organizationId"],
            "counts": Counts(),
        }
    row = state[op.execution_id]
    counts = Counts.of(row)
    if isinstance(op.params, RunStart):
        counts = Counts(op.params.total_nodes, counts.completed, counts.failed, counts.skipped)
    elif isinstance(op.params, Checkpoint) and op.params.counts:
        counts = Counts.of(row, op.params.counts)
    return {
        "execution_id": op.execution_id,
        "workflow_id": row["workflowId"],
        "organization_id": row["organizationId"],
        "counts": counts,
    }
