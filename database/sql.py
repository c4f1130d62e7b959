"""The SQL store: the API's reads and writes, and the engine's checkpoints, as short transactions.

`SqlStore` holds the SQL that both backends share; `database.sqlite.SqliteStore` and
`database.postgres.PostgresStore` override the few hooks that differ: how a transaction runs
(`_run`, and SQLite's on-loop `_write_now`/`_read_now`), row locks (`_lock_unclaimed`,
`_apply`) and byte-order collation (`byte_order`).
"""

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from database.batch import INLINE_BATCH_MAX, INTEGRITY_ERRORS, GroupCommit, Op
from database.events import (
    COUNT_COLUMNS,
    QUEUED,
    RESUMED,
    STARTED,
    Counts,
    Draft,
    cancel_draft,
    end_draft,
    event_row,
    node_drafts,
)
from database.interfaces import (
    HISTORY_RUN_COLUMNS,
    LIST_COLUMNS,
    RUN_COLUMNS,
    CallbackStore,
    Checkpoint,
    EntityStore,
    ExecutionQuery,
    IdempotencyKey,
    NewExecution,
    RunEnd,
    RunStart,
)
from database.listen import NOTIFY_QUEUE
from database.listing import sql_list_all
from database.schema import create_all, executions, logs, runs, workflows
from database.sql_events import SqlEvents, insert_events
from database.sql_keys import insert_keyed, taken
from database.sql_queue import SqlQueue
from database.versions import SqlVersions
from errors import DuplicateExecution
from jsonutil import dump_json, now_iso
from metrics import store_commit
from states import ACTIVE_STATUSES, ExecutionStatus, RunState

logger = logging.getLogger(__name__)
R = TypeVar("R")
CANCELLED_TEXT = "Execution cancelled by user"
BUSY = object()
"""`_read_now`'s answer when it cannot read at once (the caller falls back to `_run`)."""


class SqlStore(SqlQueue, SqlEvents, SqlVersions):
    """All database access of the service over SQLAlchemy Core. Open with `database.open_store`,
    close with `close`. Each operation is one short transaction written as a plain function of a
    SQLAlchemy Connection, run by the backend's `_run`."""

    DRIVER: ClassVar[str]
    """The SQLAlchemy async driver of the backend's URLs (`sqlite+aiosqlite`, …)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._group = GroupCommit(self._commit)
        self._entities: EntityStore | None = None

    @property
    def entities(self) -> EntityStore:
        """The fetchData/saveRecords data (`database.entities.SqlEntityStore`)."""
        if self._entities is None:
            from database.entities import SqlEntityStore

            self._entities = SqlEntityStore(self)
        return self._entities

    @property
    def callbacks(self) -> CallbackStore:
        """The callbacks' outbox (`database.callbacks.SqlCallbackStore`)."""
        from database.callbacks import SqlCallbackStore

        return SqlCallbackStore(self)

    @classmethod
    async def open(cls, url: str, *, create: bool = True) -> "SqlStore":
        """The store on `url` (its async driver chosen here); see `database.open_store`."""
        parsed = make_url(url)
        store = cls.connect(parsed.set(drivername=cls.DRIVER))
        if create:
            await store.create_all()
        logger.info("store open: %s", parsed.render_as_string(hide_password=True))
        return store

    @classmethod
    def connect(cls, url: sa.URL) -> "SqlStore":
        """The backend's engines on `url` (an async-driver URL)."""
        raise NotImplementedError

    async def close(self) -> None:
        await self.engine.dispose()

    def _write_now(self, op: Callable[[sa.Connection], R]) -> R | None:
        """A small write on the event loop thread when that costs nothing; None otherwise."""
        return None

    def _read_now(self, op: Callable[[sa.Connection], R]) -> R | object:
        """A one-row read on the event loop thread when that never waits; `BUSY` otherwise."""
        return BUSY

    async def _read(self, op: Callable[[sa.Connection], R]) -> R:
        """A short read on the event loop where that never waits (`_read_now`), else in a read
        transaction."""
        if (found := self._read_now(op)) is not BUSY:
            return found  # type: ignore[return-value]
        return await self._run(op, write=False)

    def _apply(self, conn: sa.Connection, batch: list[Op]) -> list[bool]:
        """Write one group commit (`database.batch.apply_batch` with the backend's options)."""
        raise NotImplementedError

    def byte_order(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """`column` ordered by bytes (entity records sort the same on every backend)."""
        return column

    async def _commit(self, batch: list[Op]) -> list[bool]:
        apply = functools.partial(self._apply, batch=batch)
        with store_commit():  # wos_store_commit_seconds
            results = self._write_now(apply) if len(batch) <= INLINE_BATCH_MAX else None
            if results is None:
                results = await self._run(apply, write=True)
        return results

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A short write transaction on the async engine (`BEGIN IMMEDIATE` on SQLite), for
        the entity store and tests."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(wos_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def create_all(self) -> None:
        await self._run(create_all, write=True)

    async def get_workflow(
        self, workflow_id: str, organization: str | None = None
    ) -> dict[str, Any] | None:
        query = sa.select(
            workflows.c.id, workflows.c.name, workflows.c.data, workflows.c.organizationId
        ).where(workflows.c.id == workflow_id)
        if organization is not None:
            query = query.where(
                sa.or_(
                    workflows.c.organizationId == organization,
                    workflows.c.organizationId.is_(None),
                )
            )

        def op(conn: sa.Connection) -> dict[str, Any] | None:
            row = conn.execute(query).mappings().first()
            return dict(row) if row else None

        if (found := self._read_now(op)) is not BUSY:  # the submit path: no thread hop
            return found  # type: ignore[return-value]
        return await self._run(op, write=False)

    async def create_execution(
        self, new: NewExecution, *, idempotency: IdempotencyKey | None = None
    ) -> tuple[str, str] | None:
        """Insert the pending execution row and queue it, in one transaction.

        With `idempotency`, an unexpired earlier submit with the same key and organization
        wins: nothing is inserted and its (execution id, request hash) is returned instead.
        Raises DuplicateExecution when the id exists or a concurrent same-key submit won.
        """
        execution_id, organization_id = new.execution_id, new.organization_id
        now = now_iso()
        org = organization_id or ""
        rows: dict[str, dict[str, Any]] = {
            "execution": {
                "id": execution_id,
                "workflowId": new.workflow_id,
                "organizationId": organization_id,
                "status": ExecutionStatus.PENDING.value,
                "inputs": dump_json(new.inputs),
                "createdAt": now,
                "nodeResults": new.node_results,
            },
            "run": {
                "executionId": execution_id,
                "seq": time.time_ns(),
                "workflowName": new.workflow_name,
                "definition": new.definition,
                "requestedMode": new.mode,
                "state": RunState.QUEUED,
                "createdAt": now,
                "retryOf": new.retry_of,
                "dataOrganizationId": new.data_organization_id,
                "callback": new.callback,
                "priority": new.priority,
                "orgGroup": org,
                "workflowVersion": new.workflow_version,
                "workflowHash": new.workflow_hash,
            },
        }
        try:
            if idempotency is None:  # the common case: group-committed with concurrent submits
                await self._group.submit(Op("create", execution_id, rows, [Draft(QUEUED)]))
                return None
            insert = functools.partial(
                insert_keyed, rows=rows, key=idempotency, org=org, notify=self.NOTIFY_EVENTS
            )
            return await self._run(functools.partial(self._queue_keyed, insert), write=True)
        except INTEGRITY_ERRORS as exc:
            if await self._run(
                functools.partial(taken, execution_id=execution_id, key=idempotency, org=org),
                write=False,
            ):
                raise DuplicateExecution() from exc
            raise  # another constraint (e.g. a foreign key of the Node backend's schema)

    def _queue_keyed(
        self, insert: Callable[[sa.Connection], tuple[str, str] | None], conn: sa.Connection
    ) -> tuple[str, str] | None:
        """A keyed submit that inserted wakes the workers of every machine (PostgreSQL)."""
        found = insert(conn)
        if found is None and self.NOTIFY_EVENTS:
            conn.execute(NOTIFY_QUEUE)
        return found

    async def get_execution(
        self, execution_id: str, organization: str | None = None
    ) -> dict[str, Any] | None:
        """The execution row joined with the service's own state (None where not ours)."""
        query = (
            sa.select(
                executions,
                *[runs.c[c] for c in RUN_COLUMNS],
            )
            .select_from(executions.outerjoin(runs, runs.c.executionId == executions.c.id))
            .where(_of_execution(execution_id, organization))
        )

        def op(conn: sa.Connection) -> dict[str, Any] | None:
            row = conn.execute(query).mappings().first()
            return dict(row) if row else None

        return await self._run(op, write=False)

    async def get_logs(
        self, execution_id: str, last: int | None = None, organization: str | None = None
    ) -> list[dict[str, Any]]:
        """Log rows oldest first; with `last`, only the `last` most recent."""
        order = (logs.c.timestamp, logs.c.id)
        query = sa.select(logs).where(logs.c.executionId == execution_id)
        if organization is not None:
            query = query.where(sa.exists().where(_of_execution(execution_id, organization)))
        if last is not None:
            query = query.order_by(*(c.desc() for c in order)).limit(last)
        else:
            query = query.order_by(*order)

        def op(conn: sa.Connection) -> list[dict[str, Any]]:
            rows = [dict(r) for r in conn.execute(query).mappings()]
            return rows[::-1] if last is not None else rows

        return await self._run(op, write=False)

    async def log_counts(self, execution_id: str) -> dict[str, int]:
        """Distinct nodes per final log status, for rows the service did not create."""
        query = (
            sa.select(logs.c.status, sa.func.count(sa.distinct(logs.c.nodeId)))
            .where(logs.c.executionId == execution_id)
            .group_by(logs.c.status)
        )
        return await self._run(
            lambda conn: {s or "": n for s, n in conn.execute(query).all()}, write=False
        )

    async def cancel(
        self, execution_id: str, organization: str | None = None
    ) -> tuple[str | None, bool]:
        """Cancel a pending/running execution. Returns (previous status or None, cancelled?)."""

        query = (
            sa.select(
                executions.c.status,
                executions.c.workflowId,
                executions.c.organizationId,
                *(runs.c[c] for c in COUNT_COLUMNS),
            )
            .select_from(executions.outerjoin(runs, runs.c.executionId == executions.c.id))
            .where(_of_execution(execution_id, organization))
        )

        def op(conn: sa.Connection) -> tuple[str | None, bool]:
            row = conn.execute(query).mappings().first()
            if row is None:
                return None, False
            status = row["status"] or ""
            if status not in ACTIVE_STATUSES:
                return status, False
            now = now_iso()
            conn.execute(
                executions.update()
                .where(executions.c.id == execution_id)
                .values(
                    status=ExecutionStatus.CANCELLED.value,
                    error=CANCELLED_TEXT,
                    completedAt=now,
                )
            )
            conn.execute(
                runs.update()
                .where(runs.c.executionId == execution_id, runs.c.state == RunState.QUEUED)
                .values(state=RunState.DONE)
            )
            event = event_row(
                cancel_draft(CANCELLED_TEXT),
                execution_id=execution_id,
                workflow_id=row["workflowId"],
                organization_id=row["organizationId"],
                counts=Counts.of(row),
                now=now,
            )
            insert_events(conn, [event], notify=self.NOTIFY_EVENTS)
            return status, True

        return await self._run(op, write=True)

    async def list_executions(
        self, workflow_id: str, limit: int, organization: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        cols = [executions.c[c] for c in LIST_COLUMNS]
        cols += [runs.c[c] for c in HISTORY_RUN_COLUMNS]
        where = executions.c.workflowId == workflow_id
        if organization is not None:
            where = sa.and_(where, executions.c.organizationId == organization)

        def op(conn: sa.Connection) -> tuple[list[dict[str, Any]], int]:
            rows = (
                conn.execute(
                    sa.select(*cols)
                    .select_from(executions.outerjoin(runs, runs.c.executionId == executions.c.id))
                    .where(where)
                    .order_by(executions.c.createdAt.desc(), executions.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            total = conn.execute(
                sa.select(sa.func.count()).select_from(executions).where(where)
            ).scalar_one()
            return [dict(r) for r in rows], int(total)

        return await self._run(op, write=False)

    async def list_all_executions(
        self, query: ExecutionQuery
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """A page of every workflow's executions and the active counts (`database.listing`)."""
        return await self._run(functools.partial(sql_list_all, query=query), write=False)

    async def start(self, execution_id: str, run: RunStart, owner: str | None = None) -> bool:
        """Mark the execution running; False when it is no longer pending/running (cancelled)
        or, with `owner`, when another worker took its lease over (then nothing is written)."""
        draft = Draft(RESUMED if run.resumed else STARTED)
        return await self._group.submit(Op("start", execution_id, run, [draft], owner=owner))

    async def checkpoint(
        self, execution_id: str, checkpoint: Checkpoint, owner: str | None = None
    ) -> bool:
        """Commit settled nodes and started nodes atomically. False when the row left `running`
        (cancelled): then only the final rows of settled nodes are written, no `running` rows;
        with `owner`, False and nothing written when another worker took the lease over."""
        drafts = node_drafts(checkpoint.rows)
        op = Op("checkpoint", execution_id, checkpoint, drafts, owner=owner)
        return await self._group.submit(op)

    async def finish(self, execution_id: str, end: RunEnd, owner: str | None = None) -> bool:
        """Write the terminal status unless the row is no longer pending/running (never
        overwrites `cancelled`); the service's run state becomes done either way, unless
        `owner` lost the lease (then nothing is written)."""
        op = Op("finish", execution_id, end, [end_draft(end)], owner=owner)
        return await self._group.submit(op)


def _of_execution(execution_id: str, organization: str | None) -> sa.ColumnElement[bool]:
    """The execution row, of `organization` when given (None: any org)."""
    where = executions.c.id == execution_id
    if organization is None:
        return where
    return sa.and_(where, executions.c.organizationId == organization)
