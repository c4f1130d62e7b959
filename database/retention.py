"""Execution retention on every store: which finished executions of the service fall outside the
retention window (`EXECUTION_RETENTION_DAYS`, `EXECUTION_RETENTION_MAX` per organization), and
deleting them with everything they own in short write transactions.

An execution is prunable when the service created it (it has its `wos_executions` row: the Node
backend's own executions are never touched), it is finished (state `done`, status terminal), no
callback delivery of it waits for an attempt and the callbacks' dispatcher has read all its
events. `prune` deletes its children first (logs, events, deliveries, idempotency keys) at most
`row_limit` rows per transaction and the execution's own rows last, so an interrupted prune
leaves a complete-looking execution the next pass finishes. Like `database.probes`, the
functions take the store and pick the SQL or the in-memory way.
"""

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from database.schema import (
    callback_cursor,
    callback_deliveries,
    events,
    executions,
    idempotency,
    leases,
    logs,
    runs,
)
from jsonutil import iso_ms
from states import TERMINAL_STATUSES, DeliveryStatus, RunState

_TERMINAL = sorted(str(s) for s in TERMINAL_STATUSES)
CURSOR_NAME = "dispatcher"
"""The callbacks dispatcher's cursor row (`database.callbacks.CURSOR_NAME`)."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What to keep. None: that rule is off."""

    days: float | None = None
    """Finished executions that ended (else were created) longer ago than this go."""
    max_per_org: int | None = None
    """Only the newest this many finished executions of each organization are kept (executions
    without an organization form one group)."""

    @property
    def enabled(self) -> bool:
        return self.days is not None or self.max_per_org is not None


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one `prune` transaction deleted."""

    rows: int
    """Rows of logs, events, deliveries and keys."""
    executions: list[str]
    """Executions deleted whole (their own rows went in this transaction)."""
    seconds: float
    """Time spent inside the write transaction's statements (the write lock's hold on SQLite,
    less the commit)."""


def _sql(store: Any) -> bool:
    from database.sql import SqlStore

    return isinstance(store, SqlStore)


def cutoff_iso(policy: RetentionPolicy, now: float) -> str | None:
    """The ISO timestamp before which executions are too old (None: no age rule)."""
    if policy.days is None:
        return None
    return iso_ms(dt.datetime.fromtimestamp(now - policy.days * 86400, dt.UTC))


async def candidates(store: Any, policy: RetentionPolicy, limit: int, now: float) -> list[str]:
    """Up to `limit` prunable executions outside the policy, oldest submission first (a read)."""
    if not policy.enabled or limit <= 0:
        return []
    if not _sql(store):
        from database.memory_retention import memory_candidates

        return memory_candidates(store, policy, limit, cutoff_iso(policy, now))
    query = _candidates_query(policy, limit, cutoff_iso(policy, now))

    def op(conn: sa.Connection) -> list[str]:
        return [row[0] for row in conn.execute(query)]

    found: list[str] = await store._run(op, write=False)
    return found


def _finished() -> list[sa.ColumnElement[bool]]:
    """Finished service executions whose callbacks are settled and dispatched."""
    pending = sa.exists().where(
        callback_deliveries.c.executionId == runs.c.executionId,
        callback_deliveries.c.status == str(DeliveryStatus.PENDING),
    )
    cursor = sa.select(callback_cursor.c.eventId).where(callback_cursor.c.name == CURSOR_NAME)
    undispatched = sa.exists().where(
        events.c.executionId == runs.c.executionId,
        events.c.id > sa.func.coalesce(cursor.scalar_subquery(), 0),
    )
    return [
        runs.c.state == str(RunState.DONE),
        executions.c.status.in_(_TERMINAL),
        ~pending,
        sa.or_(runs.c.callback.is_(None), ~undispatched),
    ]


_org_group = sa.func.coalesce(executions.c.organizationId, "")
"""The organization's group (`database.claim_order.org_group`): no organization is the group ""."""


def _candidates_query(policy: RetentionPolicy, limit: int, cutoff: str | None) -> sa.Select[Any]:
    joined = runs.join(executions, executions.c.id == runs.c.executionId)
    rules: list[sa.ColumnElement[bool]] = []
    if cutoff is not None:
        ended = sa.func.coalesce(executions.c.completedAt, executions.c.createdAt)
        rules.append(ended < cutoff)
    if policy.max_per_org is not None:
        rank = (
            sa.select(
                runs.c.executionId,
                sa.func.row_number()
                .over(partition_by=_org_group, order_by=runs.c.seq.desc())
                .label("rank"),
            )
            .select_from(joined)
            .where(*_finished()[:2])  # waiting callbacks delay a prune, not the ranking
            .subquery()
        )
        over = sa.select(rank.c.executionId).where(rank.c.rank > policy.max_per_org)
        rules.append(runs.c.executionId.in_(over))
    return (
        sa.select(runs.c.executionId)
        .select_from(joined)
        .where(*_finished(), sa.or_(*rules))
        .order_by(runs.c.seq)
        .limit(limit)
    )


async def prune(store: Any, execution_ids: Sequence[str], row_limit: int) -> Pruned:
    """One write transaction: delete up to `row_limit` rows that `execution_ids` own, and the
    executions themselves once nothing of theirs is left (rechecked: still finished)."""
    if not _sql(store):
        from database.memory_retention import memory_prune

        return memory_prune(store, execution_ids, row_limit)
    ids = list(execution_ids)

    def op(conn: sa.Connection) -> Pruned:
        started = time.perf_counter()
        budget, deleted = row_limit, 0
        for table, key in _CHILDREN:
            if budget <= 0:
                break
            chunk = sa.select(key).where(table.c.executionId.in_(ids)).limit(budget)
            gone = conn.execute(table.delete().where(key.in_(chunk))).rowcount
            deleted += gone
            budget -= gone
        done: list[str] = []
        if budget > 0:  # nothing of theirs was left over: the executions themselves
            done = list(
                conn.scalars(
                    sa.select(runs.c.executionId).where(
                        runs.c.executionId.in_(ids), runs.c.state == str(RunState.DONE)
                    )
                )
            )
            if done:  # (an empty IN would still scan the tables)
                conn.execute(idempotency.delete().where(idempotency.c.executionId.in_(done)))
                conn.execute(executions.delete().where(executions.c.id.in_(done)))
                conn.execute(runs.delete().where(runs.c.executionId.in_(done)))
        return Pruned(deleted, done, time.perf_counter() - started)

    pruned: Pruned = await store._run(op, write=True)
    return pruned


_CHILDREN: tuple[tuple[sa.Table, sa.ColumnElement[Any]], ...] = (
    (logs, logs.c.id),
    (events, events.c.id),
    (callback_deliveries, callback_deliveries.c.id),
)
"""The tables whose rows an execution owns, and their keys (deleted a chunk at a time)."""


async def take_lease(store: Any, name: str, owner: str, lease_s: float) -> bool:
    """Hold (or renew) the lease `name` for `owner` for `lease_s` seconds; False while another
    owner holds it. One process at a time prunes (`flows.retention`)."""
    now = time.time()
    if not _sql(store):
        from database.memory_retention import memory_lease

        return memory_lease(store, name, owner, now, lease_s)

    def op(conn: sa.Connection) -> bool:
        held = conn.execute(
            leases.update()
            .where(
                leases.c.name == name,
                sa.or_(leases.c.owner == owner, leases.c.expiresAt < now),
            )
            .values(owner=owner, expiresAt=now + lease_s)
        ).rowcount
        if held:
            return True
        if conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first():
            return False
        conn.execute(leases.insert().values(name=name, owner=owner, expiresAt=now + lease_s))
        return True

    try:
        taken: bool = await store._run(op, write=True)
    except sa.exc.IntegrityError:  # another process inserted the row first
        return False
    return taken


async def drop_lease(store: Any, name: str, owner: str) -> None:
    """Give the lease back (a stopping process), if `owner` holds it."""
    if not _sql(store):
        from database.memory_retention import memory_drop_lease

        memory_drop_lease(store, name, owner)
        return
    query = leases.delete().where(leases.c.name == name, leases.c.owner == owner)
    await store._run(lambda conn: conn.execute(query), write=True)
