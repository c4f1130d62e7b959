"""`Idempotency-Key` submits on SQL (part of `SqlStore.create_execution`): the earlier submit
of the same key and organization wins while it holds, else the execution is inserted with its
key and its `execution.queued` event, in one transaction."""

import time
from typing import Any

import sqlalchemy as sa

from database.events import QUEUED, Counts, Draft, event_row
from database.interfaces import IdempotencyKey
from database.schema import executions, runs
from database.schema import idempotency as keys
from database.sql_claims import assign_turns
from database.sql_events import insert_events


def insert_keyed(
    conn: sa.Connection,
    *,
    rows: dict[str, dict[str, Any]],
    key: IdempotencyKey,
    org: str,
    notify: bool,
) -> tuple[str, str] | None:
    """An `Idempotency-Key` submit: the earlier unexpired submit's (id, hash), or insert."""
    match = keys.c.key == key.key, keys.c.organizationId == org
    earlier = conn.execute(
        sa.select(keys.c.executionId, keys.c.requestHash, keys.c.expiresAt).where(*match)
    ).first()
    if earlier is not None and earlier.expiresAt > time.time():
        return earlier.executionId, earlier.requestHash
    if earlier is not None:
        conn.execute(keys.delete().where(*match))
    conn.execute(
        keys.insert().values(
            key=key.key,
            organizationId=org,
            requestHash=key.request_hash,
            executionId=rows["execution"]["id"],
            expiresAt=time.time() + key.ttl_s,
        )
    )
    execution = rows["execution"]
    conn.execute(executions.insert().values(execution))
    assign_turns(conn, [rows["run"]])
    conn.execute(runs.insert().values(rows["run"]))
    event = event_row(
        Draft(QUEUED),
        execution_id=execution["id"],
        workflow_id=execution["workflowId"],
        organization_id=execution["organizationId"],
        counts=Counts(),
        now=execution["createdAt"],
    )
    insert_events(conn, [event], notify=notify)
    return None


def taken(conn: sa.Connection, *, execution_id: str, key: IdempotencyKey | None, org: str) -> bool:
    """After an insert failed on a constraint: was it this execution id, or this key?"""
    found = [
        sa.select(executions.c.id).where(executions.c.id == execution_id),
        sa.select(runs.c.executionId).where(runs.c.executionId == execution_id),
    ]
    if key is not None:
        found.append(
            sa.select(keys.c.key).where(keys.c.key == key.key, keys.c.organizationId == org)
        )
    return any(conn.execute(query.limit(1)).first() is not None for query in found)
