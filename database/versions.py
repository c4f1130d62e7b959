"""Reads of the Node backend's workflow versions (`workflow_versions` and
`workflows.publishedVersionId`) on the SQL stores; the service never writes either."""

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from database.interfaces import VERSION_COLUMNS, Row
from database.schema import workflow_versions, workflows

R = TypeVar("R")
_v = workflow_versions


_published = sa.case((_v.c.id == workflows.c.publishedVersionId, True), else_=False)
_NEWEST = (_v.c.version.desc(), _v.c.createdAt.desc(), _v.c.id.desc())
_SELECT = (
    sa.select(*(_v.c[c] for c in VERSION_COLUMNS), _published.label("published"))
    .select_from(_v.outerjoin(workflows, workflows.c.id == _v.c.workflowId))
    .where(_v.c.workflowId == sa.bindparam("workflow_id"))
)
"""A workflow's versions with `published`: whether publishedVersionId names the row. The
statements are built once (the submit path reads the published version)."""
_LIST = (
    sa.select(
        *(_v.c[c] for c in VERSION_COLUMNS if c != "data"),
        sa.func.length(_v.c.data).label("size"),
        _published.label("published"),
    )
    .select_from(_v.outerjoin(workflows, workflows.c.id == _v.c.workflowId))
    .where(_v.c.workflowId == sa.bindparam("workflow_id"))
    .order_by(*_NEWEST)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
"""The list leaves `data` out (its `size` instead): the caller reads one definition at a time."""
_ONE = (
    _SELECT.where(_v.c.version == sa.bindparam("version", type_=sa.Integer))
    .order_by(*_NEWEST)
    .limit(1)
)
_PUBLISHED = _SELECT.where(_v.c.id == workflows.c.publishedVersionId).limit(1)


def _rows(conn: sa.Connection, query: sa.Select[Any], params: dict[str, Any]) -> list[Row]:
    rows = conn.execute(query, params).mappings()
    return [{**r, "published": bool(r["published"])} for r in rows]


class SqlVersions:
    """`ApiStore`'s version reads, mixed into `database.sql.SqlStore`."""

    async def _read(self, op: Callable[[sa.Connection], R]) -> R:
        raise NotImplementedError  # SqlStore's

    async def list_versions(self, workflow_id: str, limit: int) -> list[Row]:
        params = {"workflow_id": workflow_id, "limit": limit}
        return await self._read(lambda conn: _rows(conn, _LIST, params))

    async def get_version(self, workflow_id: str, version: int) -> Row | None:
        params = {"workflow_id": workflow_id, "version": version}
        return await self._read(lambda conn: next(iter(_rows(conn, _ONE, params)), None))

    async def get_published_version(self, workflow_id: str) -> Row | None:
        params = {"workflow_id": workflow_id}
        return await self._read(lambda conn: next(iter(_rows(conn, _PUBLISHED, params)), None))
