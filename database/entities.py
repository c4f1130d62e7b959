"""The SQL of the fetchData and saveRecords nodes: the Node backend's entity tables and the generic
`<tableName>` tables saveRecords creates when no entity is configured (contract §2.5).

Each write is one short transaction on the store's async engine.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from database.generic import (
    GENERIC_COLUMNS,
    check_columns,
    check_name,
    duplicate_id,
    fold_records,
    generic_row,
)
from database.ids import new_log_id, new_row_id
from database.interfaces import EntitySave, GenericSave, NewRecord, Row
from database.schema import entities, properties, record_values, records
from database.sql import SqlStore
from errors import EntityNotFound, EntityStoreError

_CHUNK = 500


class SqlEntityStore:
    """`EntityStore` on the SQL store's engine (`store.entities`)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def fetch_entity_records(
        self, entity_id: str, organization: str | None
    ) -> tuple[str | None, list[Row]]:
        """(entity name, records) with values keyed by property name, ordered by createdAt then id.

        A record's own `id` and `createdAt` win over properties of the same name; a value whose
        property no longer exists is keyed by its property id. Raises EntityNotFound.
        """
        query = (
            sa.select(
                records.c.id,
                records.c.createdAt,
                record_values.c.propertyId,
                record_values.c.value,
                properties.c.name,
            )
            .select_from(
                records.outerjoin(
                    record_values, record_values.c.recordId == records.c.id
                ).outerjoin(properties, properties.c.id == record_values.c.propertyId)
            )
            .where(records.c.entityId == entity_id)
            .order_by(
                self._store.byte_order(records.c.createdAt).asc().nulls_first(),
                self._store.byte_order(records.c.id),
            )
        )
        try:
            async with self._store.read() as conn:
                name = await _entity_name(conn, entity_id, organization)
                rows = (await conn.execute(query)).all()
        except sa.exc.SQLAlchemyError as exc:
            raise EntityStoreError(
                f"Could not read records of entity {entity_id!r}: {_reason(exc)}"
            ) from exc
        return name, fold_records(tuple(row) for row in rows)

    async def save_entity_records(
        self,
        entity_id: str,
        organization: str | None,
        new_records: Sequence[NewRecord],
        types: dict[str, str],
    ) -> EntitySave:
        """Create a property for each key of `types` (name → type) the entity lacks (names match
        case-insensitively), then one `records` row per record and one `record_values` row per
        value, in one transaction. Every key of a record's values must be in `types`."""
        try:
            async with self._store.write() as conn:
                name = await _entity_name(conn, entity_id, organization)
                existing = (
                    await conn.execute(
                        sa.select(properties.c.id, properties.c.name)
                        .where(properties.c.entityId == entity_id)
                        .order_by(properties.c.id)
                    )
                ).all()
                prop_ids: dict[str, str] = {}
                for pid, pname in existing:
                    prop_ids.setdefault((pname or "").lower(), pid)
                created: list[tuple[str, str]] = []
                for key, type_ in types.items():
                    if key.lower() not in prop_ids:
                        prop_ids[key.lower()] = new_row_id()
                        created.append((key, type_))
                if created:
                    await conn.execute(
                        properties.insert(),
                        [
                            {"id": prop_ids[k.lower()], "entityId": entity_id, "name": k, "type": t}
                            for k, t in created
                        ],
                    )
                ids = [new_log_id() for _ in new_records]  # time-ordered: fetch order = save order
                if new_records:
                    await conn.execute(
                        records.insert(),
                        [
                            {
                                "id": rid,
                                "entityId": entity_id,
                                "createdAt": r.created_at,
                                "tags": "[]",
                            }
                            for rid, r in zip(ids, new_records, strict=True)
                        ],
                    )
                values = [
                    {
                        "id": new_row_id(),
                        "recordId": rid,
                        "propertyId": prop_ids[k.lower()],
                        "value": v,
                    }
                    for rid, r in zip(ids, new_records, strict=True)
                    for k, v in r.values.items()
                ]
                if values:
                    await conn.execute(record_values.insert(), values)
        except sa.exc.SQLAlchemyError as exc:
            raise EntityStoreError(
                f"Could not save records to entity {entity_id!r}: {_reason(exc)}"
            ) from exc
        return EntitySave(name, ids, created)

    async def save_generic_records(self, save: GenericSave) -> int:
        """Write `(id, data JSON)` rows into `table_name` (created if missing), in one transaction.

        Insert mode fails on an existing id; upsert updates `data`/`updatedAt` of existing ids
        of the run's organization only. Returns how many rows were updated. Names
        `database.generic.refusal` refuses raise, and tables `check_columns` refuses.
        """
        table_name, rows, upsert, now = save.table_name, save.rows, save.upsert, save.now
        check_name(table_name)
        try:
            async with self._store.write() as conn:
                table = await _ensure_generic_table(conn, table_name, save.organization_id)
                mine = org_filter(table, save.organization_id)
                last = dict(rows)  # upsert: the last record with an id wins
                existing: set[str] = set()
                if upsert:
                    keys = list(last)
                    for start in range(0, len(keys), _CHUNK):
                        chunk = table.c.id.in_(keys[start : start + _CHUNK])
                        existing |= set(
                            (
                                await conn.execute(sa.select(table.c.id).where(chunk, *mine))
                            ).scalars()
                        )
                    if existing:
                        await conn.execute(
                            table.update()
                            .where(table.c.id == sa.bindparam("b_id"), *mine)
                            .values(data=sa.bindparam("b_data"), updatedAt=now),
                            [{"b_id": i, "b_data": last[i]} for i in existing],
                        )
                pending = last.items() if upsert else rows
                with_org = "organizationId" in table.c
                inserts = [
                    generic_row(save, i, d, with_org=with_org)
                    for i, d in pending
                    if i not in existing
                ]
                if inserts:
                    await conn.execute(table.insert(), inserts)
        except sa.exc.IntegrityError as exc:
            raise duplicate_id(table_name) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise EntityStoreError(
                f"Could not save records to table {table_name!r}: {_reason(exc)}"
            ) from exc
        return len(existing)


async def _entity_name(
    conn: AsyncConnection, entity_id: str, organization: str | None
) -> str | None:
    """The entity's name; EntityNotFound unless it exists in `organization` (None: in none)."""
    org = entities.c.organizationId
    same_org = org.is_(None) if organization is None else org == organization
    row = (
        await conn.execute(sa.select(entities.c.name).where(entities.c.id == entity_id, same_org))
    ).first()
    if row is None:
        raise EntityNotFound(f"Entity {entity_id!r} not found")
    name: str | None = row.name
    return name


def _generic_table(name: str, columns: Sequence[str]) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        *(sa.Column(c, sa.Text, primary_key=c == "id") for c in columns),
    )


def org_filter(table: sa.Table, organization: str | None) -> list[sa.ColumnElement[bool]]:
    """The rows of `organization` (None: rows without one); no filter on a table that predates
    the organizationId column (only runs without an org may use it: `check_columns`)."""
    if "organizationId" not in table.c:
        return []
    column = table.c.organizationId
    return [column.is_(None) if organization is None else column == organization]


async def _ensure_generic_table(
    conn: AsyncConnection, name: str, organization: str | None
) -> sa.Table:
    """The generic table `name`, created with every `GENERIC_COLUMNS` if missing; an existing
    one must pass `check_columns` for the run's organization."""

    def existing_columns(sync_conn: sa.Connection) -> set[str] | None:
        inspector = sa.inspect(sync_conn)
        if not inspector.has_table(name):
            return None
        return {c["name"] for c in inspector.get_columns(name)}

    columns = await conn.run_sync(existing_columns)
    if columns is None:
        table = _generic_table(name, GENERIC_COLUMNS)
        await conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
        return table
    check_columns(name, columns, organization)
    return _generic_table(name, [c for c in GENERIC_COLUMNS if c in columns])


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's statement and parameter dump."""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]
