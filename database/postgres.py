"""PostgreSQL: transactions through the async engine (asyncpg), row locks, byte-order collation."""

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from database.batch import Op, apply_batch
from database.sql import SqlStore

R = TypeVar("R")


class PostgresStore(SqlStore):
    """`SqlStore` on PostgreSQL: concurrent writers, so claims and group commits lock rows."""

    DRIVER = "postgresql+asyncpg"
    NOTIFY_EVENTS = True

    @classmethod
    def connect(cls, url: sa.URL) -> "PostgresStore":
        return cls(create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True))

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
