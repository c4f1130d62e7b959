"""The worker's queue on SQL: claims with leases, renewals, releases (part of `SqlStore`)."""

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import sqlalchemy as sa

from database.claim_order import DEFAULT_POLICY, ClaimPolicy
from database.interfaces import Claim
from database.schema import executions, logs, runs
from database.sql_claims import claim_ids
from jsonutil import now_iso
from states import SETTLED_NODE_STATUSES, ExecutionStatus, NodeStatus, RunState

R = TypeVar("R")


class SqlQueue:
    """`QueueStore` over the `wos_executions` table; the backend supplies `_run`."""

    async def _run(self, op: Callable[[sa.Connection], R], *, write: bool) -> R:
        """Run `op` in one short transaction (a write transaction when `write`)."""
        raise NotImplementedError

    def _lock_unclaimed(self, pick: sa.Select[Any]) -> sa.Select[Any]:
        """The claim's pick of rows; a backend with row locks skips rows another worker locked."""
        return pick

    async def claim(
        self, owner: str, limit: int, lease_s: float, policy: ClaimPolicy = DEFAULT_POLICY
    ) -> list[Claim]:
        """Take up to `limit` executions whose lease expired, then queued ones in claim order
        (`database.sql_claims.claim_ids`: priority with aging, rotation across organizations,
        the per-organization cap)."""
        now = time.time()

        def op(conn: sa.Connection) -> list[Claim]:
            ids = claim_ids(conn, limit, now, policy, self._lock_unclaimed)
            if not ids:
                return []
            picked = conn.execute(
                sa.select(runs.c.executionId, runs.c.state, runs.c.leaseExpiresAt).where(
                    runs.c.executionId.in_(ids)
                )
            ).all()
            # a lease that expired (not one given back at 0) of a run with a node in flight
            crashed = _crashed_nodes(
                conn,
                [r.executionId for r in picked if r.state == RunState.RUNNING and r.leaseExpiresAt],
            )
            conn.execute(
                runs.update()
                .where(runs.c.executionId.in_(ids))
                .values(
                    state=RunState.RUNNING,
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
                    sa.func.coalesce(runs.c.dataOrganizationId, executions.c.organizationId),
                    executions.c.status,
                    executions.c.inputs,
                    executions.c.nodeResults,
                    runs.c.definition,
                    runs.c.requestedMode,
                    runs.c.attempts,
                    runs.c.flowRunId,
                    runs.c.workflowName,
                    runs.c.crashResumes,
                )
                .join(runs, runs.c.executionId == executions.c.id)
                .where(executions.c.id.in_(ids))
            ).all()
            order = {eid: i for i, eid in enumerate(ids)}
            rows = sorted(rows, key=lambda r: order[r.id])
            return [Claim(*r, crashed_node=crashed.get(r.id)) for r in rows]

        return await self._run(op, write=True)

    async def has_queued(self) -> bool:
        """Cheap read-only check the idle worker polls before taking the write lock to claim."""
        now = time.time()
        query = sa.select(runs.c.executionId).where(_claimable(now)).limit(1)
        return await self._run(lambda conn: conn.execute(query).first() is not None, write=False)

    async def _update_runs(self, where: Any, **values: Any) -> None:
        await self._run(
            lambda conn: conn.execute(runs.update().where(where).values(**values)), write=True
        )

    async def renew_leases(self, owner: str, running: Iterable[str], lease_s: float) -> None:
        """One write: a renewal and a give-back in two would let a claim of `owner` commit in
        between and be given back."""
        held = sa.and_(runs.c.leaseOwner == owner, runs.c.state == RunState.RUNNING)
        lease = sa.case((runs.c.executionId.in_(list(running)), time.time() + lease_s), else_=0.0)
        # rows locked in id order first, as a group commit locks them (`database.batch`): two
        # writers of one worker never wait on each other in a cycle
        lock = sa.select(runs.c.executionId).where(held).order_by(runs.c.executionId)

        def op(conn: sa.Connection) -> None:
            conn.execute(lock.with_for_update()).all()
            conn.execute(runs.update().where(held).values(leaseExpiresAt=lease))

        await self._run(op, write=True)

    async def release(self, owner: str) -> None:
        """Give back every unfinished execution of `owner` (graceful shutdown) so that the next
        worker, or this service's next start, resumes it at once instead of after the lease."""
        await self._update_runs(
            sa.and_(runs.c.leaseOwner == owner, runs.c.state == RunState.RUNNING),
            leaseExpiresAt=0.0,
        )

    async def release_instance(self, instance: str) -> None:
        """At start-up: give back what a previous run of this instance still held."""
        await self._update_runs(
            sa.and_(runs.c.leaseOwner.startswith(instance + ":"), runs.c.state == RunState.RUNNING),
            leaseExpiresAt=0.0,
        )

    async def mark_done(self, execution_id: str, owner: str | None = None) -> bool:
        where = runs.c.executionId == execution_id
        if owner is not None:  # fenced: only while `owner` still holds the lease
            where = sa.and_(where, runs.c.leaseOwner == owner)
        done = runs.update().where(where).values(state=RunState.DONE, leaseExpiresAt=None)
        return bool(await self._run(lambda conn: conn.execute(done).rowcount, write=True))

    async def cancelled_among(self, execution_ids: Iterable[str]) -> set[str]:
        ids = list(execution_ids)
        if not ids:
            return set()
        query = sa.select(executions.c.id).where(
            executions.c.id.in_(ids), executions.c.status == ExecutionStatus.CANCELLED.value
        )
        return await self._run(lambda conn: set(conn.execute(query).scalars()), write=False)


def _crashed_nodes(conn: sa.Connection, expired: list[str]) -> dict[str, str]:
    """Of executions whose lease expired while running, those with a node in flight (its last
    log row `running`, no final row) and that node; each counts one more crash resume. Read only
    on such claims, so checkpoints stay as they are."""
    found: dict[str, str] = {}
    for eid in expired:
        settled = sa.select(logs.c.nodeId).where(
            logs.c.executionId == eid,
            logs.c.status.in_([str(s) for s in SETTLED_NODE_STATUSES]),
            logs.c.nodeId.is_not(None),
        )
        node = conn.execute(
            sa.select(logs.c.nodeId)
            .where(
                logs.c.executionId == eid,
                logs.c.status == NodeStatus.RUNNING.value,
                logs.c.nodeId.not_in(settled),
            )
            .order_by(logs.c.timestamp.desc(), logs.c.id.desc())
            .limit(1)
        ).scalar()
        if node is not None:
            found[eid] = node
    if found:
        conn.execute(
            runs.update()
            .where(runs.c.executionId.in_(list(found)))
            .values(crashResumes=runs.c.crashResumes + 1)
        )
    return found


def _claimable(now: float) -> sa.ColumnElement[bool]:
    """Queued, or running with an expired lease (a NULL lease never expires)."""
    return sa.or_(
        runs.c.state == RunState.QUEUED,
        sa.and_(runs.c.state == RunState.RUNNING, runs.c.leaseExpiresAt < now),
    )
