"""The executions of every workflow, a page at a time, with the counts of active ones
(`ApiStore.list_all_executions`): one query for SQL and the same rule over the in-memory rows.

Order: `createdAt` then `id`, both descending, rows without `createdAt` last (on every backend).
"""

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from database.interfaces import HISTORY_RUN_COLUMNS, LIST_COLUMNS, ExecutionQuery, Row
from database.schema import executions, runs, workflows
from states import ACTIVE_STATUSES

COUNTED: tuple[str, ...] = tuple(sorted(s.value for s in ACTIVE_STATUSES))
"""The statuses `list_all_executions` counts (pending, running)."""

# Indexes of the Node backend's table for this list (its order, and the active counts); defined
# with the query that needs them, on the shared metadata, so `schema.create_all` creates them.
sa.Index("idx_wos_executions_created", executions.c.createdAt, executions.c.id)
sa.Index("idx_wos_executions_status", executions.c.status)


def _scope(query: ExecutionQuery) -> list[sa.ColumnElement[bool]]:
    """The organization and workflow filters, which the counts share with the page."""
    where = []
    if query.organization is not None:
        where.append(executions.c.organizationId == query.organization)
    if query.workflow_id is not None:
        where.append(executions.c.workflowId == query.workflow_id)
    return where


def _page(conn: sa.Connection, query: ExecutionQuery) -> list[Row]:
    """The page's rows: those with a createdAt first, then those without. Two index-ordered
    reads (`idx_wos_executions_created` walked backwards) instead of one ORDER BY ... NULLS
    LAST, which PostgreSQL can only answer by sorting every row in scope."""
    where = _scope(query)
    if query.status is not None:
        where.append(executions.c.status == query.status)
    name = sa.func.coalesce(runs.c.workflowName, workflows.c.name).label("workflowName")
    select = (
        sa.select(
            *(executions.c[c] for c in LIST_COLUMNS),
            executions.c.organizationId,
            name,
            *(runs.c[c] for c in HISTORY_RUN_COLUMNS),
        )
        .select_from(
            executions.outerjoin(runs, runs.c.executionId == executions.c.id).outerjoin(
                workflows, workflows.c.id == executions.c.workflowId
            )
        )
        .where(*where)
    )
    created, eid = query.before if query.before is not None else ("", None)
    rows: list[Row] = []
    if created is not None:  # the cursor, if any, is still among the rows with a createdAt
        dated = select.where(executions.c.createdAt.is_not(None))
        if eid is not None:
            position = sa.tuple_(executions.c.createdAt, executions.c.id)
            dated = dated.where(position < sa.tuple_(sa.literal(created), sa.literal(eid)))
        dated = dated.order_by(executions.c.createdAt.desc(), executions.c.id.desc())
        rows = [dict(r) for r in conn.execute(dated.limit(query.limit)).mappings()]
    if len(rows) < query.limit:
        undated = select.where(executions.c.createdAt.is_(None))
        if created is None:
            undated = undated.where(executions.c.id < eid)
        undated = undated.order_by(executions.c.id.desc()).limit(query.limit - len(rows))
        rows += [dict(r) for r in conn.execute(undated).mappings()]
    return rows


def sql_list_all(conn: sa.Connection, query: ExecutionQuery) -> tuple[list[Row], dict[str, int]]:
    """`list_all_executions` as one read transaction on a SQL store."""
    rows = _page(conn, query)
    counted = conn.execute(
        sa.select(executions.c.status, sa.func.count())
        .where(executions.c.status.in_(COUNTED), *_scope(query))
        .group_by(executions.c.status)
    ).all()
    counts = dict.fromkeys(COUNTED, 0) | {status: int(n) for status, n in counted}
    return rows, counts


def _order_key(row: Row) -> tuple[bool, str, str]:
    """Ascending key of the page order reversed: newest first, rows without createdAt last."""
    return (row["createdAt"] is not None, row["createdAt"] or "", row["id"])


def memory_list_all(
    executions_by_id: Mapping[str, Row],
    runs_by_id: Mapping[str, Row],
    workflows_by_id: Mapping[str, Row],
    query: ExecutionQuery,
) -> tuple[list[Row], dict[str, int]]:
    """`list_all_executions` over the in-memory store's rows, with the SQL order and filters."""
    scoped = [
        r
        for r in executions_by_id.values()
        if query.organization in (None, r["organizationId"])
        and query.workflow_id in (None, r["workflowId"])
    ]
    counts = dict.fromkeys(COUNTED, 0)
    for r in scoped:
        if r["status"] in counts:
            counts[r["status"]] += 1
    page = [r for r in scoped if query.status in (None, r["status"])]
    if query.before is not None:
        cursor = _order_key({"createdAt": query.before[0], "id": query.before[1]})
        page = [r for r in page if _order_key(r) < cursor]
    page.sort(key=_order_key, reverse=True)
    rows = []
    for r in page[: query.limit]:
        run: Mapping[str, Any] = runs_by_id.get(r["id"]) or {}
        workflow: Mapping[str, Any] = workflows_by_id.get(r["workflowId"]) or {}
        name = run.get("workflowName")
        name = workflow.get("name") if name is None else name
        rows.append(
            {**{c: r[c] for c in LIST_COLUMNS}, "organizationId": r["organizationId"]}
            | {"workflowName": name}
            | {c: run.get(c) for c in HISTORY_RUN_COLUMNS}
        )
    return rows, counts
