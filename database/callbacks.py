"""The callbacks' outbox on SQL (`store.callbacks`): deliveries added from the event log together
with the dispatcher's cursor, claimed with a lease (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite
writes one transaction at a time), settled per attempt.

Each operation is one short transaction run by the store's `_run`, like the rest of `SqlStore`.
"""

import time
from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from database.interfaces import Delivery, DeliveryResult, NewDelivery
from database.schema import callback_cursor, callback_deliveries, runs
from database.sql import SqlStore
from jsonutil import now_iso
from states import DeliveryStatus

CURSOR_NAME = "dispatcher"
_IN_CHUNK = 500
"""At most this many ids in one `IN (...)`."""
d = callback_deliveries
_DELIVERY_COLUMNS = (
    d.c.id,
    d.c.eventId,
    d.c.executionId,
    d.c.url,
    d.c.eventType,
    d.c.payload,
    d.c.status,
    d.c.attempts,
    d.c.createdAt,
    d.c.nextAttemptAt,
    d.c.lastError,
    d.c.deliveredAt,
)


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _delivery(row: Any) -> Delivery:
    return Delivery(*row)


class SqlCallbackStore:
    """`CallbackStore` on the SQL store (`SqlStore.callbacks`)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def cursor(self) -> int:
        query = sa.select(callback_cursor.c.eventId).where(callback_cursor.c.name == CURSOR_NAME)

        def op(conn: sa.Connection) -> int:
            return int(conn.execute(query).scalar() or 0)

        return await self._store._run(op, write=False)

    async def callbacks_of(self, execution_ids: Collection[str]) -> dict[str, str]:
        ids = sorted(execution_ids)

        def op(conn: sa.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(ids), _IN_CHUNK):
                query = sa.select(runs.c.executionId, runs.c.callback).where(
                    runs.c.executionId.in_(ids[start : start + _IN_CHUNK]),
                    runs.c.callback.is_not(None),
                )
                found.update({r.executionId: r.callback for r in conn.execute(query)})
            return found

        return await self._store._run(op, write=False)

    async def add_deliveries(self, deliveries: Sequence[NewDelivery], cursor: int) -> int:
        now = time.time()
        rows = [
            {
                "id": n.id,
                "eventId": n.event_id,
                "executionId": n.execution_id,
                "url": n.url,
                "eventType": n.event_type,
                "payload": n.payload,
                "status": DeliveryStatus.PENDING.value,
                "attempts": 0,
                "createdAt": now,
                "nextAttemptAt": now,
            }
            for n in deliveries
        ]

        def op(conn: sa.Connection) -> int:
            added = 0
            for row in rows:  # one by one: the rowcount says whether each was new
                result = conn.execute(_insert(conn, d).values(row).on_conflict_do_nothing())
                added += max(result.rowcount, 0)
            upsert = _insert(conn, callback_cursor).values(name=CURSOR_NAME, eventId=cursor)
            later = upsert.excluded.eventId > callback_cursor.c.eventId
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[callback_cursor.c.name],
                    set_={
                        "eventId": sa.case(
                            (later, upsert.excluded.eventId), else_=callback_cursor.c.eventId
                        )
                    },
                )
            )
            return added

        return await self._store._run(op, write=True)

    async def next_due(self) -> float | None:
        query = sa.select(sa.func.min(d.c.nextAttemptAt)).where(
            d.c.status == DeliveryStatus.PENDING.value
        )

        def op(conn: sa.Connection) -> float | None:
            due = conn.execute(query).scalar()
            return None if due is None else float(due)

        return await self._store._run(op, write=False)

    async def claim_due(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        def op(conn: sa.Connection) -> list[Delivery]:
            now = time.time()
            pick = (
                sa.select(d.c.id)
                .where(
                    d.c.status == DeliveryStatus.PENDING.value,
                    d.c.nextAttemptAt <= now,
                    sa.or_(d.c.leaseExpiresAt.is_(None), d.c.leaseExpiresAt < now),
                )
                .order_by(d.c.nextAttemptAt, d.c.eventId)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":  # concurrent senders skip each other's rows
                pick = pick.with_for_update(skip_locked=True)
            ids = list(conn.execute(pick).scalars())
            if not ids:
                return []
            conn.execute(
                d.update()
                .where(d.c.id.in_(ids))
                .values(leaseOwner=owner, leaseExpiresAt=now + lease_s)
            )
            rows = conn.execute(
                sa.select(*_DELIVERY_COLUMNS)
                .where(d.c.id.in_(ids))
                .order_by(d.c.nextAttemptAt, d.c.eventId)
            )
            return [_delivery(r) for r in rows]

        return await self._store._run(op, write=True)

    async def settle(self, delivery_id: str, owner: str, result: DeliveryResult) -> bool:
        values: dict[str, Any] = {
            "status": result.status,
            "attempts": d.c.attempts + 1,
            "lastError": result.error,
            "leaseOwner": None,
            "leaseExpiresAt": None,
        }
        if result.next_attempt_at is not None:
            values["nextAttemptAt"] = result.next_attempt_at
        if result.status == DeliveryStatus.DELIVERED:
            values["deliveredAt"] = now_iso()
        query = d.update().where(d.c.id == delivery_id, d.c.leaseOwner == owner).values(**values)
        return await self._store._run(lambda conn: conn.execute(query).rowcount == 1, write=True)

    async def release(self, owner_prefix: str) -> None:
        query = (
            d.update()
            .where(d.c.leaseOwner.startswith(owner_prefix, autoescape=True))
            .values(leaseOwner=None, leaseExpiresAt=None)
        )
        await self._store._run(lambda conn: conn.execute(query), write=True)

    async def deliveries_of(self, execution_id: str, limit: int) -> list[Delivery]:
        query = (
            sa.select(*_DELIVERY_COLUMNS)
            .where(d.c.executionId == execution_id)
            .order_by(d.c.eventId.desc(), d.c.url.desc())
            .limit(limit)
        )

        def op(conn: sa.Connection) -> list[Delivery]:
            return [_delivery(r) for r in conn.execute(query)][::-1]

        return await self._store._run(op, write=False)
