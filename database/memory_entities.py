"""The in-memory `EntityStore` of `database.memory.MemoryStore`: entities with their properties,
records and values, and the generic saveRecords tables, with the SQL store's rules."""

from collections.abc import Sequence

from database.generic import (
    GENERIC_COLUMNS,
    ORG_COLUMN,
    RecordValue,
    check_columns,
    check_name,
    duplicate_id,
    fold_records,
    generic_row,
)
from database.ids import new_log_id, new_row_id
from database.interfaces import EntitySave, GenericSave, NewRecord, Row
from errors import EntityNotFound


class MemoryEntityStore:
    """`EntityStore` in dictionaries; `put_entity` and `put_table` are test helpers."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.entities: dict[str, str | None] = {}
        self.entity_orgs: dict[str, str | None] = {}
        self.properties: dict[str, Row] = {}
        self.records: dict[str, Row] = {}
        self.values: list[Row] = []
        self.tables: dict[str, tuple[frozenset[str], dict[str, Row]]] = {}

    def put_entity(
        self,
        entity_id: str,
        name: str | None,
        props: Sequence[tuple[str, str, str]] = (),
        rows: Sequence[tuple[str, str | None, dict[str, str]]] = (),
        organization_id: str | None = None,
    ) -> None:
        """Test helper: an entity with `(id, name, type)` properties and `(id, createdAt,
        {property id: value})` records, as the Node backend would have written them."""
        self.entities[entity_id] = name
        self.entity_orgs[entity_id] = organization_id
        for pid, pname, ptype in props:
            self.properties[pid] = {"id": pid, "entityId": entity_id, "name": pname, "type": ptype}
        for rid, created, values in rows:
            self.records[rid] = {"id": rid, "entityId": entity_id, "createdAt": created}
            self.values.extend(
                {"id": f"{rid}_{pid}", "recordId": rid, "propertyId": pid, "value": value}
                for pid, value in values.items()
            )

    def put_table(self, name: str, columns: Sequence[str]) -> None:
        """Test helper: a table someone else created (not necessarily a saveRecords one)."""
        self.tables[name] = (frozenset(columns), {})

    def _name(self, entity_id: str, organization: str | None) -> str | None:
        if entity_id not in self.entities or self.entity_orgs.get(entity_id) != organization:
            raise EntityNotFound(f"Entity {entity_id!r} not found")
        return self.entities[entity_id]

    async def fetch_entity_records(
        self, entity_id: str, organization: str | None
    ) -> tuple[str | None, list[Row]]:
        name = self._name(entity_id, organization)
        mine = [r for r in self.records.values() if r["entityId"] == entity_id]
        # byte order (code point order of str), NULL createdAt first, as the SQL stores sort
        mine.sort(key=lambda r: (r["createdAt"] is not None, r["createdAt"] or "", r["id"]))
        values: dict[str, list[RecordValue]] = {r["id"]: [] for r in mine}
        for value in self.values:
            if (found := values.get(value["recordId"])) is not None:
                prop = self.properties.get(value["propertyId"])
                found.append(
                    (
                        value["recordId"],
                        None,
                        value["propertyId"],
                        value["value"],
                        None if prop is None else prop["name"],
                    )
                )
        return name, fold_records(
            row
            for r in mine
            for row in [(r["id"], r["createdAt"], None, None, None), *values[r["id"]]]
        )

    async def save_entity_records(
        self,
        entity_id: str,
        organization: str | None,
        new_records: Sequence[NewRecord],
        types: dict[str, str],
    ) -> EntitySave:
        name = self._name(entity_id, organization)
        prop_ids: dict[str, str] = {}
        for prop in sorted(self.properties.values(), key=lambda p: p["id"]):
            if prop["entityId"] == entity_id:
                prop_ids.setdefault((prop["name"] or "").lower(), prop["id"])
        created = [(k, t) for k, t in types.items() if k.lower() not in prop_ids]
        for key, type_ in created:
            pid = prop_ids[key.lower()] = new_row_id()
            self.properties[pid] = {"id": pid, "entityId": entity_id, "name": key, "type": type_}
        ids = [new_log_id() for _ in new_records]
        for rid, record in zip(ids, new_records, strict=True):
            self.records[rid] = {"id": rid, "entityId": entity_id, "createdAt": record.created_at}
            self.values.extend(
                {"id": new_row_id(), "recordId": rid, "propertyId": prop_ids[k.lower()], "value": v}
                for k, v in record.values.items()
            )
        return EntitySave(name, ids, created)

    async def save_generic_records(self, save: GenericSave) -> int:
        table_name, rows, upsert, now = save.table_name, save.rows, save.upsert, save.now
        check_name(table_name)
        columns, table = self.tables.get(table_name, (frozenset(GENERIC_COLUMNS), {}))
        check_columns(table_name, columns, save.organization_id)
        with_org = ORG_COLUMN in columns
        mine = {
            i for i, r in table.items() if not with_org or r[ORG_COLUMN] == save.organization_id
        }
        last = dict(rows)
        existing = set(last) & mine if upsert else set()
        pending = [(i, d) for i, d in (last.items() if upsert else rows) if i not in existing]
        ids = [i for i, _ in pending]
        if len(set(ids)) != len(ids) or set(ids) & set(table):
            raise duplicate_id(table_name)
        for i in existing:
            table[i].update(data=last[i], updatedAt=now)
        for i, d in pending:
            table[i] = generic_row(save, i, d, with_org=with_org)
        self.tables[table_name] = (columns, table)
        return len(existing)
