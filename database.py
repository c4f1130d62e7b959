"""The store: the Node backend's tables plus the service's own, on SQLite or PostgreSQL.

One SQLAlchemy Core schema serves both backends. The Node tables are created only when missing
and never altered. Every write is a short transaction (`BEGIN IMMEDIATE` on SQLite, so a writer
waits for the lock instead of failing on a read-to-write upgrade); none is held across a node run.
"""

import itertools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from jsonutil import dump_json, now_iso

logger = logging.getLogger(__name__)

metadata = sa.MetaData()
T = sa.Text


def _table(name: str, *columns: Any) -> sa.Table:
    return sa.Table(name, metadata, *columns)


def _pk() -> sa.Column[str]:
    return sa.Column("id", T, primary_key=True)


# The Node backend's tables (node_schema.sql). Decision 11: no foreign keys from
# workflow_executions to workflows/organizations, so inline workflows can be stored.
organizations = _table(
    "organizations", _pk(), sa.Column("name", T, nullable=False), sa.Column("createdAt", T),
    sa.Column("subscriptionPlan", T, server_default="free"), sa.Column("stripeCustomerId", T),
    sa.Column("stripeSubscriptionId", T), sa.Column("subscriptionStatus", T, server_default="active"),
    *(sa.Column(c, T) for c in (
        "subscriptionCurrentPeriodEnd", "industry", "employees", "website", "linkedinUrl",
        "headquarters", "foundingYear", "overview", "slackBotToken", "slackTeamId",
        "slackTeamName", "slackConnectedAt", "logo")),
    sa.Column("aiAuditMode", sa.Integer, server_default="0"),
)
entities = _table(
    "entities", _pk(), sa.Column("organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE")),
    sa.Column("name", T), sa.Column("description", T), sa.Column("author", T),
    sa.Column("lastEdited", T), sa.Column("entityType", T, server_default="generic"),
)
properties = _table(
    "properties", _pk(), sa.Column("entityId", T, sa.ForeignKey("entities.id", ondelete="CASCADE")),
    *(sa.Column(c, T) for c in ("name", "type", "defaultValue", "relatedEntityId", "unit", "formula")),
)
records = _table(
    "records", _pk(), sa.Column("entityId", T, sa.ForeignKey("entities.id", ondelete="CASCADE")),
    sa.Column("createdAt", T), sa.Column("tags", T, server_default="[]"),
)
record_values = _table(
    "record_values", _pk(), sa.Column("recordId", T, sa.ForeignKey("records.id", ondelete="CASCADE")),
    sa.Column("propertyId", T, sa.ForeignKey("properties.id", ondelete="CASCADE")),
    sa.Column("value", T),
)
workflows = _table(
    "workflows", _pk(), sa.Column("organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE")),
    sa.Column("name", T, nullable=False), sa.Column("data", T, nullable=False),
    *(sa.Column(c, T) for c in ("tags", "createdAt", "updatedAt", "createdBy", "createdByName",
                                "lastEditedBy", "lastEditedByName", "publishedVersionId")),
    sa.Column("activeVersionNumber", sa.Integer), sa.Column("isPublic", sa.Integer, server_default="0"),
)
executions = _table(
    "workflow_executions", _pk(), sa.Column("workflowId", T, nullable=False),
    sa.Column("organizationId", T), sa.Column("status", T, server_default="pending"),
    sa.Column("triggerType", T, server_default="manual"),
    *(sa.Column(c, T) for c in ("inputs", "currentNodeId", "nodeResults", "finalOutput", "error",
                                "createdAt", "startedAt", "completedAt", "triggeredByName")),
    sa.Column("versionNumber", sa.Integer),
)
logs = _table(
    "execution_logs", _pk(),
    sa.Column("executionId", T, sa.ForeignKey("workflow_executions.id", ondelete="CASCADE"), nullable=False),
    *(sa.Column(c, T) for c in ("nodeId", "nodeType", "nodeLabel", "status", "inputData",
                                "outputData", "error")),
    sa.Column("duration", sa.Integer), sa.Column("timestamp", T),
)
workflow_versions = _table(
    "workflow_versions", _pk(),
    sa.Column("workflowId", T, sa.ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False),
    sa.Column("organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    *(sa.Column(c, T) for c in ("name",)), sa.Column("data", T, nullable=False),
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
    """16 hex chars that sort in creation order within a process (tie-break for equal timestamps)."""
    return f"{(time.time_ns() >> 12) & 0xFFFFFFFFFFFF:012x}{next(_log_ids) & 0xFFFF:04x}"


@dataclass(frozen=True)
class LogRow:
    node_id: str
    node_type: str
    node_label: str
    status: str
    input_json: str | None = None
    output_json: str | None = None
    error: str | None = None
    duration_ms: int | None = None


@dataclass(frozen=True)
class Claim:
    """An execution a worker just took ownership of."""

    execution_id: str
    workflow_id: str
    organization_id: str | None
    status: str
    inputs: str | None
    node_results: str | None
    definition: str
    requested_mode: str
    attempts: int


def async_url(url: str) -> sa.URL:
    """Map `sqlite:///` and `postgresql://` URLs to their async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"Unsupported DATABASE_URL scheme {parsed.drivername!r} (use sqlite or postgresql)")


class Store:
    """All database access of the service. Open with `open_store`, close with `close`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A short write transaction (`BEGIN IMMEDIATE` on SQLite)."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(wos_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    # -- API side -------------------------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        async with self.read() as conn:
            row = (await conn.execute(
                sa.select(workflows.c.id, workflows.c.name, workflows.c.data,
                          workflows.c.organizationId).where(workflows.c.id == workflow_id)
            )).mappings().first()
        return dict(row) if row else None

    async def create_execution(
        self, *, execution_id: str, workflow_id: str, workflow_name: str | None,
        organization_id: str | None, inputs: dict[str, Any], definition: str, mode: str,
        retry_of: str | None = None, node_results: str | None = None,
        idempotency_key: tuple[str, str, float] | None = None,
    ) -> tuple[str, str] | None:
        """Insert the pending execution row and queue it, in one transaction.

        With `idempotency_key=(key, request_hash, ttl_s)`, an unexpired earlier submit with the
        same key and organization wins: nothing is inserted and its (execution id, request hash)
        is returned instead.
        """
        now = now_iso()
        org = organization_id or ""
        async with self.write() as conn:
            if idempotency_key is not None:
                key, request_hash, ttl_s = idempotency_key
                match = idempotency.c.key == key, idempotency.c.organizationId == org
                earlier = (await conn.execute(
                    sa.select(idempotency.c.executionId, idempotency.c.requestHash,
                              idempotency.c.expiresAt).where(*match))).first()
                if earlier is not None and earlier.expiresAt > time.time():
                    return earlier.executionId, earlier.requestHash
                if earlier is not None:
                    await conn.execute(idempotency.delete().where(*match))
                await conn.execute(idempotency.insert().values(
                    key=key, organizationId=org, requestHash=request_hash,
                    executionId=execution_id, expiresAt=time.time() + ttl_s))
            await conn.execute(executions.insert().values(
                id=execution_id, workflowId=workflow_id, organizationId=organization_id,
                status="pending", inputs=dump_json(inputs), createdAt=now,
                nodeResults=node_results,
            ))
            await conn.execute(runs.insert().values(
                executionId=execution_id, seq=time.time_ns(), workflowName=workflow_name,
                definition=definition, requestedMode=mode, state=QUEUED, createdAt=now,
                retryOf=retry_of,
            ))
        return None

    async def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        """The execution row joined with the service's own state (None where not ours)."""
        query = (
            sa.select(executions, *[runs.c[c] for c in (
                "workflowName", "definition", "requestedMode", "mode", "modeReason", "attempts", "resumedAt", "retryOf",
                "flowRunId", "totalNodes", "completedNodes", "failedNodes", "skippedNodes",
                "state")])
            .select_from(executions.outerjoin(runs, runs.c.executionId == executions.c.id))
            .where(executions.c.id == execution_id)
        )
        async with self.read() as conn:
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def get_logs(self, execution_id: str, last: int | None = None) -> list[dict[str, Any]]:
        """Log rows oldest first; with `last`, only the `last` most recent."""
        order = (logs.c.timestamp, logs.c.id)
        query = sa.select(logs).where(logs.c.executionId == execution_id)
        if last is not None:
            query = query.order_by(*(c.desc() for c in order)).limit(last)
        else:
            query = query.order_by(*order)
        async with self.read() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        return rows[::-1] if last is not None else rows

    async def log_counts(self, execution_id: str) -> dict[str, int]:
        """Distinct nodes per final log status, for rows the service did not create."""
        query = (
            sa.select(logs.c.status, sa.func.count(sa.distinct(logs.c.nodeId)))
            .where(logs.c.executionId == execution_id).group_by(logs.c.status)
        )
        async with self.read() as conn:
            return {s or "": n for s, n in (await conn.execute(query)).all()}

    async def cancel(self, execution_id: str) -> tuple[str | None, bool]:
        """Cancel a pending/running execution. Returns (previous status or None, cancelled?)."""
        async with self.write() as conn:
            status = (await conn.execute(
                sa.select(executions.c.status).where(executions.c.id == execution_id)
            )).scalar_one_or_none()
            if status is None:
                found = (await conn.execute(
                    sa.select(executions.c.id).where(executions.c.id == execution_id)
                )).first()
                return (("" if found else None), False)
            if status not in ("pending", "running"):
                return status, False
            await conn.execute(executions.update().where(executions.c.id == execution_id).values(
                status="cancelled", error="Execution cancelled by user", completedAt=now_iso()))
            await conn.execute(runs.update().where(
                runs.c.executionId == execution_id, runs.c.state == QUEUED).values(state=DONE))
            return status, True

    async def list_executions(self, workflow_id: str, limit: int) -> tuple[list[dict[str, Any]], int]:
        cols = [executions.c[c] for c in ("id", "workflowId", "status", "createdAt", "startedAt",
                                          "completedAt", "error")]
        where = executions.c.workflowId == workflow_id
        async with self.read() as conn:
            rows = (await conn.execute(
                sa.select(*cols).where(where)
                .order_by(executions.c.createdAt.desc(), executions.c.id.desc()).limit(limit)
            )).mappings().all()
            total = (await conn.execute(
                sa.select(sa.func.count()).select_from(executions).where(where))).scalar_one()
        return [dict(r) for r in rows], int(total)

    # -- worker side ----------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        """Take up to `limit` queued executions in submission order, plus any whose lease expired."""
        now = time.time()
        ready = sa.or_(runs.c.state == QUEUED,
                       sa.and_(runs.c.state == RUNNING, runs.c.leaseExpiresAt < now))
        pick = sa.select(runs.c.executionId).where(ready).order_by(runs.c.seq).limit(limit)
        if not self.is_sqlite:
            pick = pick.with_for_update(skip_locked=True)
        async with self.write() as conn:
            ids = list((await conn.execute(pick)).scalars())
            if not ids:
                return []
            await conn.execute(runs.update().where(runs.c.executionId.in_(ids)).values(
                state=RUNNING, leaseOwner=owner, leaseExpiresAt=now + lease_s,
                attempts=runs.c.attempts + 1,
                resumedAt=sa.case((runs.c.attempts > 0, now_iso()), else_=runs.c.resumedAt),
            ))
            rows = (await conn.execute(
                sa.select(executions.c.id, executions.c.workflowId, executions.c.organizationId,
                          executions.c.status, executions.c.inputs, executions.c.nodeResults,
                          runs.c.definition, runs.c.requestedMode, runs.c.attempts)
                .join(runs, runs.c.executionId == executions.c.id)
                .where(executions.c.id.in_(ids)).order_by(runs.c.seq)
            )).all()
        return [Claim(*r) for r in rows]

    async def renew_leases(self, owner: str, lease_s: float) -> None:
        async with self.write() as conn:
            await conn.execute(runs.update().where(
                runs.c.leaseOwner == owner, runs.c.state == RUNNING
            ).values(leaseExpiresAt=time.time() + lease_s))

    async def release(self, owner: str) -> None:
        """Give back every unfinished execution of `owner` (graceful shutdown) so that the next
        worker, or this service's next start, resumes it at once instead of after the lease."""
        async with self.write() as conn:
            await conn.execute(runs.update().where(
                runs.c.leaseOwner == owner, runs.c.state == RUNNING).values(leaseExpiresAt=0.0))

    async def release_instance(self, instance: str) -> None:
        """At start-up: give back what a previous run of this instance still held."""
        async with self.write() as conn:
            await conn.execute(runs.update().where(
                runs.c.leaseOwner.startswith(instance + ":"), runs.c.state == RUNNING
            ).values(leaseExpiresAt=0.0))

    async def cancelled_among(self, execution_ids: Iterable[str]) -> set[str]:
        ids = list(execution_ids)
        if not ids:
            return set()
        async with self.read() as conn:
            rows = await conn.execute(sa.select(executions.c.id).where(
                executions.c.id.in_(ids), executions.c.status == "cancelled"))
            return set(rows.scalars())

    async def start(self, execution_id: str, *, total_nodes: int, mode: str,
                    mode_reason: str | None, flow_run_id: str | None = None) -> bool:
        """Mark the execution running; False when it is no longer pending/running (cancelled)."""
        async with self.write() as conn:
            result = await conn.execute(executions.update().where(
                executions.c.id == execution_id, executions.c.status.in_(("pending", "running"))
            ).values(status="running", startedAt=sa.func.coalesce(executions.c.startedAt, now_iso())))
            await conn.execute(runs.update().where(runs.c.executionId == execution_id).values(
                totalNodes=total_nodes, mode=mode, modeReason=mode_reason, flowRunId=flow_run_id))
            return result.rowcount > 0

    async def checkpoint(
        self, execution_id: str, rows: list[LogRow], *, current_node_id: str | None,
        node_results: str | None, counts: dict[str, int],
    ) -> bool:
        """Commit settled nodes and started nodes atomically. False when the row left `running`
        (cancelled): then only the final rows of settled nodes are written, no `running` rows."""
        values: dict[str, Any] = {"status": executions.c.status}  # no-op keeps rowcount honest
        if current_node_id is not None:
            values["currentNodeId"] = current_node_id
        if node_results is not None:
            values["nodeResults"] = node_results
        async with self.write() as conn:
            result = await conn.execute(executions.update().where(
                executions.c.id == execution_id, executions.c.status == "running"
            ).values(**values))
            live = result.rowcount > 0
            keep = rows if live else [r for r in rows if r.status != "running"]
            if keep:
                now = now_iso()
                await conn.execute(logs.insert(), [
                    dict(id=new_log_id(), executionId=execution_id, nodeId=r.node_id,
                         nodeType=r.node_type, nodeLabel=r.node_label, status=r.status,
                         inputData=r.input_json, outputData=r.output_json, error=r.error,
                         duration=r.duration_ms, timestamp=now) for r in keep])
            if counts:
                await conn.execute(runs.update().where(runs.c.executionId == execution_id)
                                   .values(**counts))
            return live

    async def finish(
        self, execution_id: str, *, status: str, error: str | None, node_results: str | None,
    ) -> bool:
        """Write the terminal status unless the row is no longer running (never overwrites
        `cancelled`); the service's run state becomes done either way."""
        async with self.write() as conn:
            values: dict[str, Any] = dict(status=status, error=error, completedAt=now_iso())
            if node_results is not None:
                values.update(nodeResults=node_results, finalOutput=node_results)
            result = await conn.execute(executions.update().where(
                executions.c.id == execution_id,
                executions.c.status.in_(("pending", "running"))).values(**values))
            await conn.execute(runs.update().where(runs.c.executionId == execution_id)
                               .values(state=DONE, leaseExpiresAt=None))
            return result.rowcount > 0

    async def mark_done(self, execution_id: str) -> None:
        async with self.write() as conn:
            await conn.execute(runs.update().where(runs.c.executionId == execution_id)
                               .values(state=DONE, leaseExpiresAt=None))


def _sqlite_engine(url: sa.URL) -> AsyncEngine:
    path = url.database or ""
    if path and path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, pool_size=8, max_overflow=8)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = OFF")  # Decision 11
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("wos_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


async def open_store(url: str, *, create: bool = True) -> Store:
    """Connect, and (by default) create every missing table; existing tables are left as they are."""
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed)
    else:
        engine = create_async_engine(parsed, pool_size=10, max_overflow=10, pool_pre_ping=True)
    store = Store(engine)
    if create:
        async with store.write() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)
    logger.info("store open: %s", parsed.render_as_string(hide_password=True))
    return store
