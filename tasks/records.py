"""Entity node types: fetchData (records keyed by property name) and saveRecords (contract
§4.11, §4.12). The data lives behind the store's `EntityStore`; these handlers shape it. Both act
for the run's data organization (`RunContext.organization_id`) only: an entity of another
organization is not found, a generic table's rows of another organization are never touched."""

import datetime as dt
import re
import secrets
from typing import Any

from pydantic import AliasChoices, Field

from database.generic import DEFAULT_TABLE, refusal
from database.interfaces import EntityStore, GenericSave, NewRecord
from errors import EntityNotFound, EntityStoreError, NodeConfigError, NodeExecutionError
from jsonutil import dump_json, iso_ms, now_iso
from tasks.context import RunContext
from tasks.cpu import run_cpu
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import js_str, records, to_number

STRIPPED_KEYS = frozenset({"metadata", "raw"})
NOT_PROPERTIES = frozenset(
    {"id", "createdAt", "updatedAt", "entityId", "metadata", "raw", "__index"}
)
SAVE_MODES = ("insert", "upsert")
_DATE_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _store(ctx: RunContext) -> EntityStore:
    store = ctx.resources.store
    if store is None:
        raise NodeExecutionError(f"No database is available to the {ctx.node_type} node")
    return store.entities


class FetchDataConfig(NodeConfig):
    entityId: str | None = Field(
        default=None, validation_alias=AliasChoices("entityId", "selectedEntityId")
    )
    entityName: str | None = Field(
        default=None,
        validation_alias=AliasChoices("entityName", "customName", "selectedEntityName"),
    )


def merge_input(rows: list[dict[str, Any]], data: Any) -> list[dict[str, Any]]:
    """The editor's merge: an object input is spread into every record; a list of the same
    length pairwise; a list of one into every record. Record fields win."""
    if isinstance(data, dict) and data:
        return [{**data, **row} for row in rows]
    if isinstance(data, list) and data:
        if len(data) == len(rows):
            return [
                {**d, **row} if isinstance(d, dict) else row
                for d, row in zip(data, rows, strict=True)
            ]
        if len(data) == 1 and isinstance(data[0], dict):
            return [{**data[0], **row} for row in rows]
    return rows


@node("fetchData", config=FetchDataConfig)
async def fetch_data(config: FetchDataConfig, data: Any, ctx: RunContext) -> Envelope:
    if not config.entityId:
        raise NodeConfigError("No entity configured for fetchData node")
    try:
        name, rows = await _store(ctx).fetch_entity_records(config.entityId, ctx.organization_id)
    except EntityNotFound:
        raise NodeConfigError(f"Entity {config.entityId!r} not found (entityId)") from None
    except EntityStoreError as exc:
        raise NodeExecutionError(str(exc)) from exc
    rows = await run_cpu(merge_input, rows, data, size=len(rows))
    label = name or config.entityName or config.entityId
    return envelope(f"Fetched {len(rows)} records from {label}", rows, recordCount=len(rows))


class SaveRecordsConfig(NodeConfig):
    entityId: str | None = Field(
        default=None, validation_alias=AliasChoices("entityId", "targetEntityId")
    )
    targetEntityName: str | None = None
    tableName: str | None = None
    entityName: str | None = None
    saveMode: str | None = None


def infer_type(value: Any) -> str:
    """Property type for a new key from its first non-empty value (NODE-EXEC's rule)."""
    if isinstance(value, bool):
        return "text"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        if _DATE_PREFIX.match(value):
            return "date"
        if to_number(value) is not None:
            return "number"
    return "text"


def created_at(record: dict[str, Any], now: str) -> str:
    """The record's `timestamp` or `createdAt` as UTC ISO with ms and Z (zone-less = UTC; epoch
    numbers above 1e11 are milliseconds, else seconds); unparseable strings are kept; else now."""
    value = record.get("timestamp") or record.get("createdAt")
    try:
        if isinstance(value, str) and value.strip():
            return iso_ms(dt.datetime.fromisoformat(value.strip()))
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = value / 1000 if abs(value) > 1e11 else value
            return iso_ms(dt.datetime.fromtimestamp(seconds, dt.UTC))
    except (ValueError, OverflowError, OSError):
        return value if isinstance(value, str) else now
    return now


def _entity_rows(data: Any) -> list[dict[str, Any]]:
    rows = records(data)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise NodeExecutionError(
                f"saveRecords with an entity needs objects; record {index} is {js_str(row)[:60]}"
            )
    return [{k: v for k, v in row.items() if k not in STRIPPED_KEYS} for row in rows]


def _new_records(rows: list[dict[str, Any]], now: str) -> tuple[list[NewRecord], dict[str, str]]:
    """The records to save and the type of each key (of its first non-empty value)."""
    inferred: dict[str, str | None] = {}  # key → type of its first non-empty value
    new_records = []
    for row in rows:
        values = {k: v for k, v in row.items() if k not in NOT_PROPERTIES}
        for key, value in values.items():
            if inferred.get(key) is None:
                inferred[key] = None if value is None or value == "" else infer_type(value)
        new_records.append(
            NewRecord(
                created_at(row, now), {k: js_str(v) for k, v in values.items() if v is not None}
            )
        )
    return new_records, {key: type_ or "text" for key, type_ in inferred.items()}


async def _save_to_entity(
    config: SaveRecordsConfig, entity_id: str, data: Any, ctx: RunContext
) -> Envelope:
    rows = await run_cpu(_entity_rows, data, size=len(records(data)))
    new_records, types = await run_cpu(_new_records, rows, now_iso(), size=len(rows))
    try:
        saved = await _store(ctx).save_entity_records(
            entity_id, ctx.organization_id, new_records, types
        )
    except EntityNotFound:
        raise NodeConfigError(f"Entity {entity_id!r} not found (entityId)") from None
    except EntityStoreError as exc:
        raise NodeExecutionError(str(exc)) from exc
    label = saved.entity_name or config.targetEntityName or entity_id
    message = f"Saved {len(saved.saved_ids)} record(s) to {label}"
    if saved.created_properties:
        message += f" (created properties: {', '.join(n for n, _ in saved.created_properties)})"
    return envelope(
        message,
        data,
        savedIds=saved.saved_ids,
        entityId=entity_id,
        createdProperties=len(saved.created_properties),
        isTimeSeries=any(row.get("timestamp") not in (None, "") for row in rows),
    )


def table_name(config: SaveRecordsConfig) -> str:
    """The generic table: `tableName`, else `entityName`, else `saved_records`; validated."""
    field, name = next(
        (
            (f, v)
            for f, v in (("tableName", config.tableName), ("entityName", config.entityName))
            if v
        ),
        ("tableName", DEFAULT_TABLE),
    )
    reason = refusal(name)
    if reason is not None:
        raise NodeConfigError(f"Invalid {field} {name!r}: it {reason}")
    return name


def _table_rows(items: list[Any]) -> list[tuple[str, str]]:
    """(id, JSON) of each record: its own `id`, else a random one."""
    rows = []
    for record in items:
        rid = record.get("id") if isinstance(record, dict) else None
        rows.append((secrets.token_hex(8) if rid in (None, "") else js_str(rid), dump_json(record)))
    return rows


async def _save_to_table(
    config: SaveRecordsConfig, mode: str, data: Any, ctx: RunContext
) -> Envelope:
    table = table_name(config)
    rows = await run_cpu(_table_rows, records(data), size=len(records(data)))
    try:
        updated = await _store(ctx).save_generic_records(
            GenericSave(
                table,
                rows,
                upsert=mode == "upsert",
                workflow_id=ctx.workflow_id,
                execution_id=ctx.execution_id,
                now=now_iso(),
                organization_id=ctx.organization_id,
            )
        )
    except EntityStoreError as exc:
        raise NodeExecutionError(str(exc)) from exc
    return envelope(
        f"Saved {len(rows)} record(s) to '{table}'",
        data,
        savedIds=[r[0] for r in rows],
        tableName=table,
        saveMode=mode,
        insertedCount=len({r[0] for r in rows}) - updated,
        updatedCount=updated,
    )


@node("saveRecords", config=SaveRecordsConfig)
async def save_records(config: SaveRecordsConfig, data: Any, ctx: RunContext) -> Envelope:
    """With an entity: NODE-EXEC's saveToEntity. Without one: JSON rows in a generic table."""
    mode = (config.saveMode or "insert").strip().lower()
    if mode not in SAVE_MODES:
        raise NodeConfigError(f"Invalid saveMode {config.saveMode!r}: use insert or upsert")
    if config.entityId:
        return await _save_to_entity(config, config.entityId, data, ctx)
    return await _save_to_table(config, mode, data, ctx)
