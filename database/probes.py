"""What the health probes and `/metrics` read from the store, and the workers' heartbeats
(`wos_workers`): a few cheap queries beside the store's interfaces, on SQL and in memory."""

import time
import weakref
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from database.claim_order import PRIORITIES, priority_name
from database.schema import events, executions, logs, runs, workers
from states import RunState

STALE_HEARTBEAT_S = 3600.0
"""Heartbeat rows older than this (workers that died without saying so) are deleted."""
REQUIRED_TABLES = tuple(t.name for t in (executions, logs, runs, events, workers))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    owner: str
    seen_at: float
    prefect: str | None
    """The worker's last Prefect probe: "ok" or why not; None when it runs inline."""


_memory_beats: "weakref.WeakKeyDictionary[Any, dict[str, Heartbeat]]" = weakref.WeakKeyDictionary()


def _sql(store: Any) -> bool:
    from database.sql import SqlStore

    return isinstance(store, SqlStore)


async def ping(store: Any) -> None:
    """One round trip to the database; raises when it is unreachable."""
    if _sql(store):
        await store._run(lambda conn: conn.execute(sa.text("SELECT 1")), write=False)
    else:
        await store.get_execution("health-probe")


async def missing_tables(store: Any) -> list[str]:
    """The service's tables that do not exist (empty: the schema is ready)."""
    if not _sql(store):
        return []

    def op(conn: sa.Connection) -> list[str]:
        inspector = sa.inspect(conn)
        return [name for name in REQUIRED_TABLES if not inspector.has_table(name)]

    found: list[str] = await store._run(op, write=False)
    return found


async def queued_by_priority(store: Any) -> dict[str, int]:
    """Executions waiting for a worker, by priority name, every priority present (one count
    over the claim index on SQL)."""
    counts = dict.fromkeys(PRIORITIES, 0)
    if not _sql(store):
        for run in store.runs.values():
            if run["state"] == RunState.QUEUED:
                counts[priority_name(run.get("priority"))] += 1
        return counts
    query = (
        sa.select(runs.c.priority, sa.func.count())
        .where(runs.c.state == RunState.QUEUED)
        .group_by(runs.c.priority)
    )
    rows = await store._run(lambda conn: conn.execute(query).all(), write=False)
    for rank, count in rows:
        counts[priority_name(rank)] += count
    return counts


async def beat(store: Any, owner: str, prefect: str | None) -> None:
    """Record that `owner` is alive now (and drop the rows of long-dead workers)."""
    now = time.time()
    if not _sql(store):
        _memory_beats.setdefault(store, {})[owner] = Heartbeat(owner, now, prefect)
        return

    def op(conn: sa.Connection) -> None:
        updated = conn.execute(
            workers.update().where(workers.c.owner == owner).values(seenAt=now, prefect=prefect)
        )
        if not updated.rowcount:
            conn.execute(workers.insert().values(owner=owner, seenAt=now, prefect=prefect))
            conn.execute(workers.delete().where(workers.c.seenAt < now - STALE_HEARTBEAT_S))

    await store._run(op, write=True)


async def forget(store: Any, owner: str) -> None:
    """A worker that stops says so: it no longer counts as a live worker."""
    if not _sql(store):
        _memory_beats.get(store, {}).pop(owner, None)
        return
    await store._run(
        lambda conn: conn.execute(workers.delete().where(workers.c.owner == owner)), write=True
    )


async def heartbeats_since(store: Any, since: float) -> list[Heartbeat]:
    """The workers seen at or after `since`, most recent first."""
    if not _sql(store):
        beats = _memory_beats.get(store, {}).values()
        return sorted((b for b in beats if b.seen_at >= since), key=lambda b: -b.seen_at)
    query = (
        sa.select(workers.c.owner, workers.c.seenAt, workers.c.prefect)
        .where(workers.c.seenAt >= since)
        .order_by(workers.c.seenAt.desc())
        .limit(1000)
    )

    def op(conn: sa.Connection) -> list[Heartbeat]:
        return [Heartbeat(*row) for row in conn.execute(query)]

    found: list[Heartbeat] = await store._run(op, write=False)
    return found
