"""SQL of the fetchData and saveRecords nodes: the Node backend's entity tables and the generic
`<tableName>` tables saveRecords creates when no entity is configured (contract §2.5).

Every function takes the service's `database.Store`; each write is one short transaction.
"""

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from database import Store, entities, metadata, new_log_id, properties, record_values, records

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DEFAULT_TABLE = "saved_records"
GENERIC_COLUMNS = ("id", "data", "workflowId", "executionId", "createdAt", "updatedAt")
RESERVED_PREFIXES = ("wos_", "sqlite_", "pg_")
# Tables the Node backend creates (server/db.js) beyond those in `database.metadata`.
NODE_BACKEND_TABLES = frozenset(
    {
        "users",
        "user_organizations",
        "dashboards",
        "widgets",
        "simulations",
        "scenarios",
        "list_items",
        "pending_approvals",
        "node_feedback",
        "pending_invitations",
        "report_templates",
        "template_sections",
        "reports",
        "report_sections",
        "report_contexts",
        "report_comments",
        "ai_assistant_files",
        "knowledge_documents",
        "knowledge_document_chunks",
        "knowledge_folders",
        "dashboard_workflow_connections",
        "notifications",
        "notification_reads",
        "alert_configs",
        "copilot_chats",
        "audit_logs",
        "ot_alerts",
        "workflow_schedules",
    }
)
_CHUNK = 500


class EntityStoreError(Exception):
    """A fetchData/saveRecords database operation failed."""


class EntityNotFound(EntityStoreError):
    """No entity has this id."""


@dataclass(frozen=True)
class NewRecord:
    """One record to save into an entity: `values` maps record keys to stored strings."""

    created_at: str
    values: dict[str, str]


@dataclass(frozen=True)
class EntitySave:
    entity_name: str | None
    saved_ids: list[str]
    created_properties: list[tuple[str, str]]
    """(name, type) of every property created for keys the entity did not have."""


def _new_id() -> str:
    return secrets.token_hex(8)


def _order(store: Store, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    # Byte order on both backends: PostgreSQL's default collation may ignore punctuation.
    return column if store.is_sqlite else column.collate("C")


async def fetch_entity_records(
    store: Store, entity_id: str
) -> tuple[str | None, list[dict[str, Any]]]:
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
            records.outerjoin(record_values, record_values.c.recordId == records.c.id).outerjoin(
                properties, properties.c.id == record_values.c.propertyId
            )
        )
        .where(records.c.entityId == entity_id)
        .order_by(
            _order(store, records.c.createdAt).asc().nulls_first(), _order(store, records.c.id)
        )
    )
    try:
        async with store.read() as conn:
            name = await _entity_name(conn, entity_id)
            rows = (await conn.execute(query)).all()
    except sa.exc.SQLAlchemyError as exc:
        raise EntityStoreError(
            f"Could not read records of entity {entity_id!r}: {_reason(exc)}"
        ) from exc
    by_id: dict[str, dict[str, Any]] = {}
    for rid, created_at, prop_id, value, prop_name in rows:
        record = by_id.get(rid)
        if record is None:
            record = by_id[rid] = {"id": rid, "createdAt": created_at}
        key = prop_name if prop_name is not None else prop_id
        if key is not None and key not in ("id", "createdAt"):
            record[key] = value
    return name, list(by_id.values())


async def _entity_name(conn: AsyncConnection, entity_id: str) -> str | None:
    row = (await conn.execute(sa.select(entities.c.name).where(entities.c.id == entity_id))).first()
    if row is None:
        raise EntityNotFound(f"Entity {entity_id!r} not found")
    name: str | None = row.name
    return name


async def save_entity_records(
    store: Store,
    entity_id: str,
    new_records: Sequence[NewRecord],
    types: dict[str, str],
) -> EntitySave:
    """Create a property for each key of `types` (name → type) the entity lacks (names match
    case-insensitively), then one `records` row per record and one `record_values` row per
    value, in one transaction. Every key of a record's values must be in `types`."""
    try:
        async with store.write() as conn:
            name = await _entity_name(conn, entity_id)
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
                    prop_ids[key.lower()] = _new_id()
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
                        {"id": rid, "entityId": entity_id, "createdAt": r.created_at, "tags": "[]"}
                        for rid, r in zip(ids, new_records, strict=True)
                    ],
                )
            values = [
                {"id": _new_id(), "recordId": rid, "propertyId": prop_ids[k.lower()], "value": v}
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


def refusal(table_name: str) -> str | None:
    """Why `table_name` may not be used as a generic saveRecords table (None = allowed)."""
    if not IDENTIFIER.match(table_name):
        return (
            "must start with a letter or _ and contain only letters, digits and _ "
            "(at most 63 characters)"
        )
    lowered = table_name.lower()
    if (
        lowered in {t.lower() for t in metadata.tables}
        or lowered in NODE_BACKEND_TABLES
        or lowered.startswith(RESERVED_PREFIXES)
    ):
        return "names a table of the Node backend or of this service"
    return None


def _generic_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        *(sa.Column(c, sa.Text, primary_key=c == "id") for c in GENERIC_COLUMNS),
    )


async def _ensure_generic_table(conn: AsyncConnection, table: sa.Table) -> None:
    def existing_columns(sync_conn: sa.Connection) -> set[str] | None:
        inspector = sa.inspect(sync_conn)
        if not inspector.has_table(table.name):
            return None
        return {c["name"] for c in inspector.get_columns(table.name)}

    columns = await conn.run_sync(existing_columns)
    if columns is None:
        await conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
    elif not set(GENERIC_COLUMNS) <= columns:
        raise EntityStoreError(
            f"Table {table.name!r} exists but is not a saveRecords table (it lacks "
            f"{', '.join(sorted(set(GENERIC_COLUMNS) - columns))})"
        )


async def save_generic_records(
    store: Store,
    table_name: str,
    rows: Sequence[tuple[str, str]],
    *,
    upsert: bool,
    workflow_id: str | None,
    execution_id: str | None,
    now: str,
) -> int:
    """Write `(id, data JSON)` rows into `table_name` (created if missing), in one transaction.

    Insert mode fails on an existing id; upsert updates `data`/`updatedAt` of existing ids.
    Returns how many rows were updated. The caller validates the name with `refusal` first.
    """
    table = _generic_table(table_name)
    try:
        async with store.write() as conn:
            await _ensure_generic_table(conn, table)
            last = dict(rows)  # upsert: the last record with an id wins
            existing: set[str] = set()
            if upsert:
                keys = list(last)
                for start in range(0, len(keys), _CHUNK):
                    existing |= set(
                        (
                            await conn.execute(
                                sa.select(table.c.id).where(
                                    table.c.id.in_(keys[start : start + _CHUNK])
                                )
                            )
                        ).scalars()
                    )
                if existing:
                    await conn.execute(
                        table.update()
                        .where(table.c.id == sa.bindparam("b_id"))
                        .values(data=sa.bindparam("b_data"), updatedAt=now),
                        [{"b_id": i, "b_data": last[i]} for i in existing],
                    )
            pending = last.items() if upsert else rows
            inserts = [
                {
                    "id": i,
                    "data": d,
                    "workflowId": workflow_id,
                    "executionId": execution_id,
                    "createdAt": now,
                    "updatedAt": now,
                }
                for i, d in pending
                if i not in existing
            ]
            if inserts:
                await conn.execute(table.insert(), inserts)
    except sa.exc.IntegrityError as exc:
        raise EntityStoreError(
            f"A record id already exists in table {table_name!r} (saveMode insert; use "
            f"saveMode upsert to update existing records)"
        ) from exc
    except sa.exc.SQLAlchemyError as exc:
        raise EntityStoreError(
            f"Could not save records to table {table_name!r}: {_reason(exc)}"
        ) from exc
    return len(existing)


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's statement and parameter dump."""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]
