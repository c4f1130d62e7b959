"""The store: the Node backend's tables plus the service's own, on SQLite or PostgreSQL.

One SQLAlchemy Core schema serves both backends. The Node tables are created only when missing
and never altered. Every write is a short transaction (`BEGIN IMMEDIATE` on SQLite, so a writer
waits for the lock instead of failing on a read-to-write upgrade); none is held across a node run.
"""

import asyncio
import functools
import itertools
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from database.interfaces import (  # noqa: F401 - re-exported
    ApiStore,
    Claim,
    EntitySave,
    EntityStore,
    IdempotencyKey,
    LogRow,
    NewExecution,
    NewRecord,
    QueueStore,
    Recorder,
    WorkerStore,
)
from jsonutil import dump_json, now_iso

logger = logging.getLogger(__name__)
R = TypeVar("R")

metadata = sa.MetaData()
T = sa.Text


def _table(name: str, *columns: Any) -> sa.Table:
    return sa.Table(name, metadata, *columns)


def _pk() -> sa.Column[str]:
    return sa.Column("id", T, primary_key=True)


# The Node backend's tables (node_schema.sql). Decision 11: no foreign keys from
# workflow_executions to workflows/organizations, so inline workflows can be stored.
organizations = _table(
    "organizations",
    _pk(),
    sa.Column("name", T, nullable=False),
    sa.Column("createdAt", T),
    sa.Column("subscriptionPlan", T, server_default="free"),
    sa.Column("stripeCustomerId", T),
    sa.Column("stripeSubscriptionId", T),
    sa.Column("subscriptionStatus", T, server_default="active"),
    *(
        sa.Column(c, T)
        for c in (
            "subscriptionCurrentPeriodEnd",
            "industry",
            "employees",
            "website",
            "linkedinUrl",
            "headquarters",
            "foundingYear",
            "overview",
            "slackBotToken",
            "slackTeamId",
            "slackTeamName",
            "slackConnectedAt",
            "logo",
        )
    ),
    sa.Column("aiAuditMode", sa.Integer, server_default="0"),
)
entities = _table(
    "entities",
    _pk(),
    sa.Column("organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE")),
    sa.Column("name", T),
    sa.Column("description", T),
    sa.Column("author", T),
    sa.Column("lastEdited", T),
    sa.Column("entityType", T, server_default="generic"),
)
properties = _table(
    "properties",
    _pk(),
    sa.Column("entityId", T, sa.ForeignKey("entities.id", ondelete="CASCADE")),
    *(
        sa.Column(c, T)
        for c in ("name", "type", "defaultValue", "relatedEntityId", "unit", "formula")
    ),
)
records = _table(
    "records",
    _pk(),
    sa.Column("entityId", T, sa.ForeignKey("entities.id", ondelete="CASCADE")),
    sa.Column("createdAt", T),
    sa.Column("tags", T, server_default="[]"),
)
record_values = _table(
    "record_values",
    _pk(),
    sa.Column("recordId", T, sa.ForeignKey("records.id", ondelete="CASCADE")),
    sa.Column("propertyId", T, sa.ForeignKey("properties.id", ondelete="CASCADE")),
    sa.Column("value", T),
)
workflows = _table(
    "workflows",
    _pk(),
    sa.Column("organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE")),
    sa.Column("name", T, nullable=False),
    sa.Column("data", T, nullable=False),
    *(
        sa.Column(c, T)
        for c in (
            "tags",
            "createdAt",
            "updatedAt",
            "createdBy",
            "createdByName",
            "lastEditedBy",
            "lastEditedByName",
            "publishedVersionId",
        )
    ),
    sa.Column("activeVersionNumber", sa.Integer),
    sa.Column("isPublic", sa.Integer, server_default="0"),
)
executions = _table(
    "workflow_executions",
    _pk(),
    sa.Column("workflowId", T, nullable=False),
    sa.Column("organizationId", T),
    sa.Column("status", T, server_default="pending"),
    sa.Column("triggerType", T, server_default="manual"),
    *(
        sa.Column(c, T)
        for c in (
            "inputs",
            "currentNodeId",
            "nodeResults",
            "finalOutput",
            "error",
            "createdAt",
            "startedAt",
            "completedAt",
            "triggeredByName",
        )
    ),
    sa.Column("versionNumber", sa.Integer),
)
logs = _table(
    "execution_logs",
    _pk(),
    sa.Column(
        "executionId",
        T,
        sa.ForeignKey("workflow_executions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    *(
        sa.Column(c, T)
        for c in ("nodeId", "nodeType", "nodeLabel", "status", "inputData", "outputData", "error")
    ),
    sa.Column("duration", sa.Integer),
    sa.Column("timestamp", T),
)
workflow_versions = _table(
    "workflow_versions",
    _pk(),
    sa.Column("workflowId", T, sa.ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("version", sa.Integer, nullable=False),
    *(sa.Column(c, T) for c in ("name",)),
    sa.Column("data", T, nullable=False),
    *(sa.Column(c, T) for c in ("description", "createdBy", "createdByName", "createdAt")),
    sa.Column("isProduction", sa.Integer, server_default="0"),
    sa.Index("idx_wf_versions_workflow", "workflowId", "version"),
    sa.Index("idx_wf_versions_production", "workflowId", "isProduction"),
)
sa.Index("idx_wos_logs_execution", logs.c.executionId, logs.c.timestamp)

# The service's own state (Decision 8), keyed by execution id.
runs = _table(
    "wos_executions",
    sa.Column("executionId", T, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("workflowName", T),
    sa.Column("definition", T, nullable=False),
    sa.Column("requestedMode", T, nullable=False),
    sa.Column("mode", T),
    sa.Column("modeReason", T),
    sa.Column("state", T, nullable=False),
    sa.Column("leaseOwner", T),
    sa.Column("leaseExpiresAt", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("resumedAt", T),
    sa.Column("retryOf", T),
    sa.Column("flowRunId", T),
    sa.Column("totalNodes", sa.Integer),
    sa.Column("completedNodes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failedNodes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skippedNodes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("createdAt", T, nullable=False),
    sa.Index("idx_wos_executions_state", "state", "seq"),
)

idempotency = _table(
    "wos_idempotency",
    sa.Column("key", T, primary_key=True),
    sa.Column("organizationId", T, primary_key=True, server_default=""),
    sa.Column("requestHash", T, nullable=False),
    sa.Column("executionId", T, nullable=False),
    sa.Column("expiresAt", sa.Float, nullable=False),
)

QUEUED, RUNNING, DONE = "queued", "running", "done"
_log_ids = itertools.count()


def new_execution_id() -> str:
    return secrets.token_hex(8)


def new_log_id() -> str:
    """16 hex chars sorting in creation order within a process (tie-break for equal timestamps)."""
    return f"{(time.time_ns() >> 12) & 0xFFFFFFFFFFFF:012x}{next(_log_ids) & 0xFFFF:04x}"


def async_url(url: str) -> sa.URL:
    """Map `sqlite:///` and `postgresql://` URLs to their async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(
        f"Unsupported DATABASE_URL scheme {parsed.drivername!r} (use sqlite or postgresql)"
    )


class Store:
    """All database access of the service. Open with `open_store`, close with `close`.

    Each operation is one short transaction written as a plain function of a SQLAlchemy
    Connection. On SQLite it runs whole in a thread (one thread hop per transaction instead of one
    per statement), writes on a single writer thread so this process never contends with itself
    for SQLite's lock; on PostgreSQL it runs through the async engine (`run_sync`).
    """

    def __init__(self, engine: AsyncEngine, sync_engine: sa.Engine | None = None) -> None:
        self.engine = engine
        self.sync_engine = sync_engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._queue: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._write_conn: sa.Connection | None = None
        self._write_lock = threading.Lock()
        self._loop_conn: sa.Connection | None = None
        self._readers: ThreadPoolExecutor | None = None
        if sync_engine is not None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="wos-sqlite-write")
            self._readers = ThreadPoolExecutor(4, thread_name_prefix="wos-sqlite-read")

    async def close(self) -> None:
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._close_write_conn)
        for pool in (self._writer, self._readers):
            if pool is not None:
                pool.shutdown(wait=True)
        if self.sync_engine is not None:
            self.sync_engine.dispose()
        await self.engine.dispose()

    async def _run(self, op: Callable[[sa.Connection], R], *, write: bool) -> R:
        if self.sync_engine is None:
            async with self.engine.connect() as conn:
                async with conn.begin():
                    return await conn.run_sync(op)
        pool = self._writer if write else self._readers
        return await asyncio.get_running_loop().run_in_executor(pool, self._call, op, write)

    def _call(self, op: Callable[[sa.Connection], R], write: bool) -> R:
        assert self.sync_engine is not None
        if write:
            with self._write_lock:
                return self._write(op, wait=True)  # type: ignore[return-value]
        with self.sync_engine.connect() as conn:
            with conn.begin():
                return op(conn)

    def _write(self, op: Callable[[sa.Connection], R], *, wait: bool) -> R | None:
        """`op` in a write transaction on the connection the writer keeps (no pool checkout per
        transaction); with `wait=False`, None at once when another process holds the lock.
        The caller holds `_write_lock`."""
        assert self.sync_engine is not None
        if self._write_conn is None:
            self._write_conn = self.sync_engine.connect().execution_options(wos_write=True)
        conn = self._write_conn
        try:
            if not _try_begin_immediate(conn.connection.dbapi_connection, wait=wait):
                return None
            with conn.begin():  # the BEGIN hook sees the open transaction and adds none
                return op(conn)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                self._close_write_conn()
            raise

    def _write_now(self, op: Callable[[sa.Connection], R]) -> R | None:
        """A small write on the calling (event loop) thread when neither this process's writer
        thread nor another process holds the write lock (~0.1 ms, where the thread round trip
        costs more than the write); None, at once, when either does."""
        if self.sync_engine is None or not self._write_lock.acquire(blocking=False):
            return None
        try:
            return self._write(op, wait=False)
        finally:
            self._write_lock.release()

    def _read_now(self, op: Callable[[sa.Connection], R]) -> R | object:
        """A one-row read on the event loop thread, on a connection of its own that never
        waits (busy_timeout 0): WAL readers take no lock, so only SQLite's rare busy cases (WAL
        recovery) return `_BUSY`, and the caller falls back to a reader thread."""
        if self.sync_engine is None:
            return _BUSY
        if self._loop_conn is None:
            self._loop_conn = self.sync_engine.connect()
            self._loop_conn.connection.dbapi_connection.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]
        try:
            with self._loop_conn.begin():
                return op(self._loop_conn)
        except sa.exc.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return _BUSY
            raise

    def _close_write_conn(self) -> None:
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A short write transaction on the async engine (`BEGIN IMMEDIATE` on SQLite), for
        callers outside this module (database-backed node types)."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(wos_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def create_all(self) -> None:
        def op(conn: sa.Connection) -> None:
            metadata.create_all(conn, checkfirst=True)
            # create_all skips the indexes of tables that already exist (the Node backend's)
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    index.create(conn, checkfirst=True)

        await self._run(op, write=True)

    # -- API side -------------------------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        query = sa.select(
            workflows.c.id, workflows.c.name, workflows.c.data, workflows.c.organizationId
        ).where(workflows.c.id == workflow_id)

        def op(conn: sa.Connection) -> dict[str, Any] | None:
            row = conn.execute(query).mappings().first()
            return dict(row) if row else None

        if (found := self._read_now(op)) is not _BUSY:  # the submit path: no thread hop
            return found  # type: ignore[return-value]
        return await self._run(op, write=False)

    async def create_execution(
        self, new: NewExecution, *, idempotency: IdempotencyKey | None = None
    ) -> tuple[str, str] | None:
        """Insert the pending execution row and queue it, in one transaction.

        With `idempotency`, an unexpired earlier submit with the same key and organization
        wins: nothing is inserted and its (execution id, request hash) is returned instead.
        """
        execution_id, organization_id = new.execution_id, new.organization_id
        now = now_iso()
        org = organization_id or ""
        rows = {
            "execution": {
                "id": execution_id,
                "workflowId": new.workflow_id,
                "organizationId": organization_id,
                "status": "pending",
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
                "state": QUEUED,
                "createdAt": now,
                "retryOf": new.retry_of,
            },
        }
        if idempotency is None:  # the common case: group-committed with concurrent submits
            await self._batched(_Op("create", execution_id, rows))
            return None

        def op(conn: sa.Connection) -> tuple[str, str] | None:
            key, request_hash, ttl_s = idempotency.key, idempotency.request_hash, idempotency.ttl_s
            match = idempotency.c.key == key, idempotency.c.organizationId == org
            earlier = conn.execute(
                sa.select(
                    idempotency.c.executionId,
                    idempotency.c.requestHash,
                    idempotency.c.expiresAt,
                ).where(*match)
            ).first()
            if earlier is not None and earlier.expiresAt > time.time():
                return earlier.executionId, earlier.requestHash
            if earlier is not None:
                conn.execute(idempotency.delete().where(*match))
            conn.execute(
                idempotency.insert().values(
                    key=key,
                    organizationId=org,
                    requestHash=request_hash,
                    executionId=execution_id,
                    expiresAt=time.time() + ttl_s,
                )
            )
            conn.execute(executions.insert().values(rows["execution"]))
            conn.execute(runs.insert().values(rows["run"]))
            return None

        return await self._run(op, write=True)

    async def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        """The execution row joined with the service's own state (None where not ours)."""
        query = (
            sa.select(
                executions,
                *[
                    runs.c[c]
                    for c in (
                        "workflowName",
                        "definition",
                        "requestedMode",
                        "mode",
                        "modeReason",
                        "attempts",
                        "resumedAt",
                        "retryOf",
                        "flowRunId",
                        "totalNodes",
                        "completedNodes",
                        "failedNodes",
                        "skippedNodes",
                        "state",
                    )
                ],
            )
            .select_from(executions.outerjoin(runs, runs.c.executionId == executions.c.id))
            .where(executions.c.id == execution_id)
        )

        def op(conn: sa.Connection) -> dict[str, Any] | None:
            row = conn.execute(query).mappings().first()
            return dict(row) if row else None

        return await self._run(op, write=False)

    async def get_logs(self, execution_id: str, last: int | None = None) -> list[dict[str, Any]]:
        """Log rows oldest first; with `last`, only the `last` most recent."""
        order = (logs.c.timestamp, logs.c.id)
        query = sa.select(logs).where(logs.c.executionId == execution_id)
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

    async def cancel(self, execution_id: str) -> tuple[str | None, bool]:
        """Cancel a pending/running execution. Returns (previous status or None, cancelled?)."""

        def op(conn: sa.Connection) -> tuple[str | None, bool]:
            row = conn.execute(
                sa.select(executions.c.status).where(executions.c.id == execution_id)
            ).first()
            if row is None:
                return None, False
            status = row.status or ""
            if status not in ("pending", "running"):
                return status, False
            conn.execute(
                executions.update()
                .where(executions.c.id == execution_id)
                .values(
                    status="cancelled", error="Execution cancelled by user", completedAt=now_iso()
                )
            )
            conn.execute(
                runs.update()
                .where(runs.c.executionId == execution_id, runs.c.state == QUEUED)
                .values(state=DONE)
            )
            return status, True

        return await self._run(op, write=True)

    async def list_executions(
        self, workflow_id: str, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        cols = [
            executions.c[c]
            for c in (
                "id",
                "workflowId",
                "status",
                "createdAt",
                "startedAt",
                "completedAt",
                "error",
            )
        ]
        where = executions.c.workflowId == workflow_id

        def op(conn: sa.Connection) -> tuple[list[dict[str, Any]], int]:
            rows = (
                conn.execute(
                    sa.select(*cols)
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

    # -- worker side ----------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        """Take up to `limit` queued executions in submission order, and any whose lease expired."""
        now = time.time()
        ready = sa.or_(
            runs.c.state == QUEUED, sa.and_(runs.c.state == RUNNING, runs.c.leaseExpiresAt < now)
        )
        pick = sa.select(runs.c.executionId).where(ready).order_by(runs.c.seq).limit(limit)
        if not self.is_sqlite:
            pick = pick.with_for_update(skip_locked=True)

        def op(conn: sa.Connection) -> list[Claim]:
            ids = list(conn.execute(pick).scalars())
            if not ids:
                return []
            conn.execute(
                runs.update()
                .where(runs.c.executionId.in_(ids))
                .values(
                    state=RUNNING,
                    leaseOwner=owner,
                    leaseExpiresAt=now + lease_s,
                    attempts=runs.c.attempts + 1,
                    resumedAt=sa.case((runs.c.attempts > 0, now_iso()), else_=runs.c.resumedAt),
                )
            )
            rows = conn.execute(
                sa.select(
                    executions.c.id,
                    executions.c.workflowId,
                    executions.c.organizationId,
                    executions.c.status,
                    executions.c.inputs,
                    executions.c.nodeResults,
                    runs.c.definition,
                    runs.c.requestedMode,
                    runs.c.attempts,
                    runs.c.flowRunId,
                    runs.c.workflowName,
                )
                .join(runs, runs.c.executionId == executions.c.id)
                .where(executions.c.id.in_(ids))
                .order_by(runs.c.seq)
            ).all()
            return [Claim(*r) for r in rows]

        return await self._run(op, write=True)

    async def has_queued(self) -> bool:
        """Cheap read-only check the idle worker polls before taking the write lock to claim."""
        now = time.time()
        query = (
            sa.select(runs.c.executionId)
            .where(
                sa.or_(
                    runs.c.state == QUEUED,
                    sa.and_(runs.c.state == RUNNING, runs.c.leaseExpiresAt < now),
                )
            )
            .limit(1)
        )
        return await self._run(lambda conn: conn.execute(query).first() is not None, write=False)

    async def _update_runs(self, where: Any, **values: Any) -> None:
        await self._run(
            lambda conn: conn.execute(runs.update().where(where).values(**values)), write=True
        )

    async def renew_leases(self, owner: str, running: Iterable[str], lease_s: float) -> None:
        ids = list(running)
        mine = sa.and_(runs.c.leaseOwner == owner, runs.c.state == RUNNING)
        await self._update_runs(
            sa.and_(mine, runs.c.executionId.in_(ids)), leaseExpiresAt=time.time() + lease_s
        )
        await self._update_runs(sa.and_(mine, runs.c.executionId.not_in(ids)), leaseExpiresAt=0.0)

    async def release(self, owner: str) -> None:
        """Give back every unfinished execution of `owner` (graceful shutdown) so that the next
        worker, or this service's next start, resumes it at once instead of after the lease."""
        await self._update_runs(
            sa.and_(runs.c.leaseOwner == owner, runs.c.state == RUNNING), leaseExpiresAt=0.0
        )

    async def release_instance(self, instance: str) -> None:
        """At start-up: give back what a previous run of this instance still held."""
        await self._update_runs(
            sa.and_(runs.c.leaseOwner.startswith(instance + ":"), runs.c.state == RUNNING),
            leaseExpiresAt=0.0,
        )

    async def mark_done(self, execution_id: str) -> None:
        await self._update_runs(runs.c.executionId == execution_id, state=DONE, leaseExpiresAt=None)

    async def cancelled_among(self, execution_ids: Iterable[str]) -> set[str]:
        ids = list(execution_ids)
        if not ids:
            return set()
        query = sa.select(executions.c.id).where(
            executions.c.id.in_(ids), executions.c.status == "cancelled"
        )
        return await self._run(lambda conn: set(conn.execute(query).scalars()), write=False)

    async def start(
        self,
        execution_id: str,
        *,
        total_nodes: int,
        mode: str,
        mode_reason: str | None,
        flow_run_id: str | None = None,
    ) -> bool:
        """Mark the execution running; False when it is no longer pending/running (cancelled)."""
        return await self._batched(
            _Op(
                "start",
                execution_id,
                dict(
                    totalNodes=total_nodes, mode=mode, modeReason=mode_reason, flowRunId=flow_run_id
                ),
            )
        )

    async def checkpoint(
        self,
        execution_id: str,
        rows: list[LogRow],
        *,
        current_node_id: str | None,
        node_results: str | None,
        counts: dict[str, int],
    ) -> bool:
        """Commit settled nodes and started nodes atomically. False when the row left `running`
        (cancelled): then only the final rows of settled nodes are written, no `running` rows.
        `counts` is empty or has completedNodes, failedNodes and skippedNodes."""
        return await self._batched(
            _Op(
                "checkpoint",
                execution_id,
                dict(rows=rows, current=current_node_id, results=node_results, counts=counts),
            )
        )

    async def finish(
        self,
        execution_id: str,
        *,
        status: str,
        error: str | None,
        node_results: str | None,
    ) -> bool:
        """Write the terminal status unless the row is no longer running (never overwrites
        `cancelled`); the service's run state becomes done either way."""
        return await self._batched(
            _Op("finish", execution_id, dict(status=status, error=error, results=node_results))
        )

    async def _batched(self, op: "_Op") -> bool:
        """Group commit: state changes of all running executions that arrive while a batch is
        being written go into the next transaction together (one commit, executemany)."""
        op.future = asyncio.get_running_loop().create_future()
        self._queue.append(op)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await op.future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:BATCH_MAX], self._queue[BATCH_MAX:]
            apply = functools.partial(_apply_batch, batch=batch, is_sqlite=self.is_sqlite)
            try:
                results = self._write_now(apply) if len(batch) <= INLINE_BATCH_MAX else None
                if results is None:
                    results = await self._run(apply, write=True)
            except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(exc)
                continue
            for op, live in zip(batch, results, strict=True):
                if not op.future.done():
                    op.future.set_result(live)


_BUSY = object()
BATCH_MAX = 500
INLINE_BATCH_MAX = 4
"""Batches up to this size may be written on the event loop (`Store._write_now`)."""
_LIVE = {
    "start": ("pending", "running"),
    "checkpoint": ("running",),
    "finish": ("pending", "running"),
}


@dataclass
class _Op:
    kind: str
    execution_id: str
    params: dict[str, Any]
    future: "asyncio.Future[bool]" = field(default=None, repr=False)  # type: ignore[assignment]


def _b(name: str) -> Any:
    return sa.bindparam(name)


_START_EXEC = (
    executions.update()
    .where(executions.c.id == _b("b_id"))
    .values(status="running", startedAt=sa.func.coalesce(executions.c.startedAt, _b("b_now")))
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
    runs.update().where(runs.c.executionId == _b("b_id")).values(state=DONE, leaseExpiresAt=None)
)


_STATUS = sa.select(executions.c.id, executions.c.status).where(
    executions.c.id.in_(sa.bindparam("ids", expanding=True))
)
_STATUS_FOR_UPDATE = _STATUS.with_for_update()
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


def _apply_batch(conn: sa.Connection, batch: list[_Op], is_sqlite: bool) -> list[bool]:
    """One transaction for a batch of create/start/checkpoint/finish operations (at most one per
    execution: each execution awaits its previous operation). The statuses are read first
    under the write lock (row locks on PostgreSQL), so a concurrent cancel is never overwritten."""
    run = functools.partial(_execute_many, conn) if is_sqlite else conn.execute
    creates = [op.params for op in batch if op.kind == "create"]
    if creates:
        run(_INSERT_EXEC, [p["execution"] for p in creates])
        run(_INSERT_RUN, [p["run"] for p in creates])
    status: dict[str, str] = {}
    if ids := [op.execution_id for op in batch if op.kind != "create"]:
        query = _STATUS if is_sqlite else _STATUS_FOR_UPDATE
        status = dict(conn.execute(query, {"ids": ids}).all())
    now = now_iso()
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
        live = status.get(eid) in _LIVE[op.kind]
        results.append(live)
        if op.kind == "start":
            if live:
                params[_START_EXEC].append({"b_id": eid, "b_now": now})
            params[_START_RUN].append(
                {
                    "b_id": eid,
                    "b_total": p["totalNodes"],
                    "b_mode": p["mode"],
                    "b_reason": p["modeReason"],
                    "b_flow": p["flowRunId"],
                }
            )
        elif op.kind == "checkpoint":
            if live and (p["current"] is not None or p["results"] is not None):
                params[_CHECKPOINT_EXEC].append(
                    {"b_id": eid, "b_current": p["current"], "b_results": p["results"]}
                )
            log_rows.extend(
                dict(
                    id=new_log_id(),
                    executionId=eid,
                    nodeId=r.node_id,
                    nodeType=r.node_type,
                    nodeLabel=r.node_label,
                    status=r.status,
                    inputData=r.input_json,
                    outputData=r.output_json,
                    error=r.error,
                    duration=r.duration_ms,
                    timestamp=now,
                )
                for r in p["rows"]
                if live or r.status != "running"
            )
            if p["counts"]:
                counts = p["counts"]
                params[_COUNTS_RUN].append(
                    {
                        "b_id": eid,
                        "b_done": counts["completedNodes"],
                        "b_failed": counts["failedNodes"],
                        "b_skipped": counts["skippedNodes"],
                    }
                )
        else:
            if live:
                params[_FINISH_EXEC].append(
                    {
                        "b_id": eid,
                        "b_status": p["status"],
                        "b_error": p["error"],
                        "b_now": now,
                        "b_results": p["results"],
                    }
                )
            params[_FINISH_RUN].append({"b_id": eid})
    for stmt, rows in params.items():
        if rows:
            run(stmt, rows)
    if log_rows:
        run(_INSERT_LOG, log_rows)
    return results


BUSY_TIMEOUT_MS = 30000
LOCK_POLL_S = 0.0005


def _try_begin_immediate(dbapi_conn: Any, *, wait: bool) -> bool:
    """BEGIN IMMEDIATE on a raw sqlite3 connection; False when the write lock is taken and
    `wait` is off. Waiting polls the lock every 0.5 ms: SQLite's own busy handler sleeps 1, 2, 5,
    10 … 100 ms between tries, so a writer of another process that commits every few ms (a
    worker's group commits) kept the API's inserts waiting for tens of ms; the poller's sleep
    releases the GIL, so it costs little."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout = 0")
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    try:
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                if not wait:
                    return False
            time.sleep(LOCK_POLL_S)
    finally:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.close()


def _sqlite_pragmas(engine: sa.Engine, *, thread_engine: bool) -> None:
    """Write transactions of the thread-pool engine are begun by `Store._write` (it polls the
    lock); the async engine's run on the event loop's behalf and must not sleep, so they wait
    in SQLite's busy handler."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = OFF")  # Decision 11
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if not conn.get_execution_options().get("wos_write"):
            conn.exec_driver_sql("BEGIN")
        elif not (thread_engine and conn.connection.dbapi_connection.in_transaction):  # type: ignore[union-attr]
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_engines(url: sa.URL) -> tuple[AsyncEngine, sa.Engine]:
    path = url.database or ""
    if path and path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, pool_size=4, max_overflow=4)
    sync_engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        poolclass=sa.pool.QueuePool,
        pool_size=6,
        max_overflow=4,
        connect_args={"timeout": 30, "check_same_thread": False},
    )
    _sqlite_pragmas(engine.sync_engine, thread_engine=False)
    _sqlite_pragmas(sync_engine, thread_engine=True)
    return engine, sync_engine


async def open_store(url: str, *, create: bool = True) -> Store:
    """Connect and (by default) create every missing table; existing tables are left as they are."""
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        store = Store(*_sqlite_engines(parsed))
    else:
        store = Store(
            create_async_engine(parsed, pool_size=10, max_overflow=10, pool_pre_ping=True)
        )
    if create:
        await store.create_all()
    logger.info("store open: %s", parsed.render_as_string(hide_password=True))
    return store
