"""Execution events on SQL (part of `SqlStore`): the insert every event-writing transaction ends
with, and the reads of `EventStore`.

Ids must become visible in id order, so a reader that saw id N never later finds an id below N.
SQLite has one writer at a time, so that holds by itself. PostgreSQL's sequence hands out ids
before commit, and two transactions may commit in either order; so every transaction takes one
advisory lock (`database.events.ADVISORY_LOCK`) right before inserting its events, after every
other lock it takes (no lock waits while holding it), and keeps it until it commits. It also
notifies `wos_events` with its highest id; the notification is delivered at commit.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from database.events import ADVISORY_LOCK, NOTIFY_CHANNEL, to_event
from database.interfaces import Event, Row
from database.schema import events

R = TypeVar("R")
_INSERT = events.insert()
_LOCK = sa.text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})")
_NOTIFY = sa.text(
    f"SELECT pg_notify('{NOTIFY_CHANNEL}', "
    "currval(pg_get_serial_sequence('execution_events', 'id'))::text)"
)
_COLUMNS = (
    events.c.id,
    events.c.executionId,
    events.c.workflowId,
    events.c.organizationId,
    events.c.type,
    events.c.data,
)
_LAST = sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))


def insert_events(
    conn: sa.Connection,
    rows: list[Row],
    *,
    notify: bool,
    run: Callable[[Any, list[Row]], Any] | None = None,
) -> None:
    """Insert `rows` (`database.events.event_row`) as the transaction's last writes; with
    `notify` (PostgreSQL) under the advisory lock, notifying the highest id. `run` executes the
    insert (the group commit's compiled executemany), `conn.execute` by default."""
    if not rows:
        return
    if notify:
        conn.execute(_LOCK)
    (run or conn.execute)(_INSERT, rows)
    if notify:
        conn.execute(_NOTIFY)


class SqlEvents:
    """`EventStore` over the `execution_events` table; the backend supplies `_read`."""

    NOTIFY_EVENTS = False
    """Serialise event commits and NOTIFY them (PostgreSQL)."""

    async def _read(self, op: Callable[[sa.Connection], R]) -> R:
        """A short read (on the event loop where the backend allows it)."""
        raise NotImplementedError

    async def events_after(
        self, after: int, *, execution_id: str | None = None, limit: int = 500
    ) -> list[Event]:
        """Events with id > after (of one execution when given), oldest first, at most limit."""
        query = sa.select(*_COLUMNS).where(events.c.id > after)
        if execution_id is not None:
            query = query.where(events.c.executionId == execution_id)
        query = query.order_by(events.c.id).limit(max(0, limit))

        def op(conn: sa.Connection) -> list[Event]:
            return [to_event(r["id"], r) for r in conn.execute(query).mappings()]

        return await self._read(op)

    async def last_event_id(self) -> int:
        """The highest committed event id (0 when none)."""
        return int(await self._read(lambda conn: conn.execute(_LAST).scalar_one()))
