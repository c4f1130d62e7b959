"""The claim order on SQL (`database.claim_order`'s rules): turns given at submit, and a claim
that reads a few short index ranges instead of sorting the queue.

Indexes: (state, priority, turn, seq) for each priority's rotation and its head,
(state, priority, orgGroup, turn) for an organization's latest turn, (state, priority, seq) for
the runs that have aged. A claim reads, level by level from high, at most limit + 16 rows per
stream (the level's own runs in rotation order, and the oldest runs of the level below once
they have aged), so its cost does not grow with the queue.
"""

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from database.claim_order import (
    CANDIDATE_SLACK,
    LEVELS,
    Candidate,
    ClaimPolicy,
    next_turns,
    pick,
)
from database.schema import runs
from states import RunState

Lock = Callable[[sa.Select[Any]], sa.Select[Any]]
_QUEUED = runs.c.state == RunState.QUEUED


def assign_turns(conn: sa.Connection, run_rows: list[dict[str, Any]]) -> None:
    """Set `turn` of each new `wos_executions` row from what is queued (in the inserting
    transaction, so concurrent submits of one organization take consecutive turns)."""
    keys = [(r["orgGroup"], r["priority"]) for r in run_rows]
    head = {
        p: conn.execute(
            sa.select(runs.c.turn)
            .where(_QUEUED, runs.c.priority == p)
            .order_by(runs.c.turn)
            .limit(1)
        ).scalar()
        for p in {p for _, p in keys}
    }
    last = {
        key: conn.execute(
            sa.select(runs.c.turn)
            .where(_QUEUED, runs.c.priority == key[1], runs.c.orgGroup == key[0])
            .order_by(runs.c.turn.desc())
            .limit(1)
        ).scalar()
        for key in set(keys)
    }
    for row, turn in zip(run_rows, next_turns(keys, head, last), strict=True):
        row["turn"] = turn


def claim_ids(
    conn: sa.Connection, limit: int, now: float, policy: ClaimPolicy, lock: Lock
) -> list[str]:
    """The executions a claim takes, in order: runs whose lease expired (by submission), then
    queued runs by level, turn and submission under the per-org cap. `lock` adds the backend's
    row locks (PostgreSQL: FOR UPDATE SKIP LOCKED) to each read."""
    if policy.max_per_org is not None and conn.dialect.name == "postgresql":
        # the cap counts running runs: concurrent claims would each see room for the same slot
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x776F735F636C6169)))
    expired = lock(
        sa.select(runs.c.executionId)
        .where(runs.c.state == RunState.RUNNING, runs.c.leaseExpiresAt < now)
        .order_by(runs.c.seq)
        .limit(limit)
    )
    ids: list[str] = list(conn.execute(expired).scalars())
    running: dict[str, int] = {}
    capped: list[str] = []
    if policy.max_per_org is not None:
        counts = sa.select(runs.c.orgGroup, sa.func.count()).where(runs.c.state == RunState.RUNNING)
        running = {org: n for org, n in conn.execute(counts.group_by(runs.c.orgGroup)).all()}
        capped = [org for org, n in running.items() if n >= policy.max_per_org]
    cutoff = policy.cutoff_ns(now)
    for level in LEVELS:
        room = limit - len(ids)
        if room <= 0:
            break
        found = _level_candidates(conn, level, cutoff, room + CANDIDATE_SLACK, capped, lock)
        chosen = pick(
            found, room, cutoff_ns=cutoff, running=running, max_per_org=policy.max_per_org
        )
        for c in chosen:
            running[c.org] = running.get(c.org, 0) + 1
        ids.extend(c.execution_id for c in chosen)
    return ids


def _level_candidates(
    conn: sa.Connection, level: int, cutoff: int, k: int, capped: list[str], lock: Lock
) -> list[Candidate]:
    """The first `k` runs of the level's own priority (not yet aged) in rotation order, and
    the `k` oldest aged runs of the priority below."""
    columns = (runs.c.executionId, runs.c.priority, runs.c.orgGroup, runs.c.turn, runs.c.seq)
    mine = runs.c.priority == level
    if level > 0:
        mine = sa.and_(mine, runs.c.seq >= cutoff)
    streams = [
        sa.select(*columns).where(_QUEUED, mine).order_by(runs.c.turn, runs.c.seq),
        sa.select(*columns)
        .where(_QUEUED, runs.c.priority == level + 1, runs.c.seq < cutoff)
        .order_by(runs.c.seq),
    ]
    found: list[Candidate] = []
    for stream in streams if level + 1 <= max(LEVELS) else streams[:1]:
        if capped:
            stream = stream.where(runs.c.orgGroup.not_in(capped))
        for r in conn.execute(lock(stream.limit(k))).mappings():
            found.append(
                Candidate(r["executionId"], r["priority"], r["orgGroup"], r["turn"], r["seq"])
            )
    return found
