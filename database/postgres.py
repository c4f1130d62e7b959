"""PostgreSQL: transactions through the async engine (asyncpg), row locks, byte-order collation."""

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from database.batch import Op, apply_batch
from database.schema import create_all
from database.sql import SqlStore

R = TypeVar("R")
SCHEMA_LOCK = sa.text("SELECT pg_advisory_xact_lock(8606165917364581)")
"""Held while the tables are created: API and worker roles starting at once on one database
would otherwise race on the same CREATE TABLE (a unique violation in pg_type)."""
IDLE_IN_TRANSACTION_MS = 5_000
"""A process frozen inside a transaction (SIGSTOP, a paused VM, a partition) would hold its row
locks, and the events' advisory lock, until it thaws: no other worker could take its runs over
(claims skip locked rows) and every event-writing commit would wait. PostgreSQL ends such a
session after this long (a third of the default lease: a healthy worker whose renewal waited
behind such a session keeps its leases); the frozen process finds its connection gone when it
wakes."""


class PostgresStore(SqlStore):
    """`SqlStore` on PostgreSQL: concurrent writers, so claims and group commits lock rows."""

    DRIVER = "postgresql+asyncpg"
    NOTIFY_EVENTS = True

    @classmethod
    def connect(cls, url: sa.URL) -> "PostgresStore":
        timeout = {"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)}
        engine = create_async_engine(
            url,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,
            connect_args={"server_settings": timeout},
        )
        return cls(engine)

    async def create_all(self) -> None:
        def locked(conn: sa.Connection) -> None:
            conn.execute(SCHEMA_LOCK)
            create_all(conn)

        await self._run(locked, write=True)

    async def _run(self, op: Callable[[sa.Connection], R], *, write: bool) -> R:
        async with self.engine.connect() as conn:
            async with conn.begin():
                return await conn.run_sync(op)

    def _apply(self, conn: sa.Connection, batch: list[Op]) -> list[bool]:
        # statuses read FOR UPDATE: a concurrent cancel waits for this batch, never overwritten
        return apply_batch(conn, batch, executemany=False, lock_rows=True, notify=True)

    def _lock_unclaimed(self, pick: sa.Select[Any]) -> sa.Select[Any]:
        return pick.with_for_update(skip_locked=True)

    def byte_order(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        # the database's default collation may ignore punctuation
        return column.collate("C")
