"""fetchData and saveRecords (contract §4.11, §4.12) against the service's store, on a SQLite file
created as the Node backend creates it and on the local PostgreSQL server (SQL stores only)."""

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from database import open_store
from database.schema import entities, organizations, properties, record_values, records
from database.sql import SqlStore
from errors import NodeConfigError, NodeExecutionError
from tasks.context import Resources
from tasks.records import created_at, infer_type, merge_input
from tests.conftest import CallNode, MakeResources
from tests.support import node_backend_sqlite

Store = SqlStore  # the assertions read the tables with SQL; tests/test_store_contract.py
# runs the entity store's behaviour on the in-memory store too


@pytest.fixture
def store(sql_store: SqlStore) -> SqlStore:
    return sql_store


@pytest.fixture
def res(make_resources: MakeResources, store: Store) -> Resources:
    resources = make_resources()
    resources.store = store
    return resources


PROPS = [
    ("p_name", "Name", "text"),
    ("p_temp", "Temperature", "number"),
    ("p_status", "Status", "text"),
]
# (id, createdAt, {property id: value}); inserted out of order on purpose
RECORDS = [
    ("r_b", "2025-06-15T10:00:00.000Z", {"p_name": "Boiler", "p_temp": "85"}),
    ("r_c", "2025-06-14T09:00:00.000Z", {"p_name": "Chiller", "p_temp": "7.5", "p_status": "ok"}),
    ("r_a", "2025-06-14T09:00:00.000Z", {"p_name": "Aerator"}),
    ("r_0", None, {}),
]
FETCHED = [
    {"id": "r_0", "createdAt": None},
    {"id": "r_a", "createdAt": "2025-06-14T09:00:00.000Z", "Name": "Aerator"},
    {
        "id": "r_c",
        "createdAt": "2025-06-14T09:00:00.000Z",
        "Name": "Chiller",
        "Temperature": "7.5",
        "Status": "ok",
    },
    {"id": "r_b", "createdAt": "2025-06-15T10:00:00.000Z", "Name": "Boiler", "Temperature": "85"},
]


async def seed(
    store: Store,
    entity_id: str = "ent_1",
    name: str = "Machines",
    props: list[tuple[str, str, str]] = PROPS,
    rows: list[tuple[str, str | None, dict[str, str]]] = RECORDS,
) -> None:
    async with store.write() as conn:
        if not (await conn.execute(sa.select(organizations.c.id))).first():
            await conn.execute(organizations.insert().values(id="org_test", name="Test org"))
        await conn.execute(
            entities.insert().values(id=entity_id, organizationId="org_test", name=name)
        )
        if props:
            await conn.execute(
                properties.insert(),
                [{"id": pid, "entityId": entity_id, "name": n, "type": t} for pid, n, t in props],
            )
        for rid, created, values in rows:
            await conn.execute(
                records.insert().values(id=rid, entityId=entity_id, createdAt=created)
            )
            for pid, value in values.items():
                await conn.execute(
                    record_values.insert().values(
                        id=f"{rid}_{pid}", recordId=rid, propertyId=pid, value=value
                    )
                )


async def fetch_all(store: Store, query: Any) -> list[Any]:
    async with store.read() as conn:
        return list((await conn.execute(query)).all())


async def test_fetch_data_keys_by_property_name_in_creation_order(
    call_node: CallNode, res: Resources, store: Store
) -> None:
    await seed(store)
    await seed(
        store,
        "ent_other",
        "Other",
        [("q1", "Name", "text")],
        [("o1", "2025-01-01T00:00:00.000Z", {"q1": "not mine"})],
    )
    result = await call_node(
        "fetchData", {"entityId": "ent_1", "entityName": "Machines"}, resources=res
    )
    assert result["outputData"] == FETCHED
    assert [r["id"] for r in result["outputData"]] == ["r_0", "r_a", "r_c", "r_b"]
    assert result["recordCount"] == 4
    assert result["message"] == "Fetched 4 records from Machines"


@pytest.mark.parametrize(
    ("data", "expected_extra"),
    [
        (None, [{}, {}, {}, {}]),
        ({}, [{}, {}, {}, {}]),
        (
            {"plant": "Bilbao", "Name": "kept where the record has none"},
            [{"plant": "Bilbao", "Name": "kept where the record has none"}] * 4,
        ),
        ([{"batch": 1}], [{"batch": 1}] * 4),
        ([{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}], [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]),
        ([{"i": 0}, {"i": 1}], [{}, {}, {}, {}]),
        (["scalar"], [{}, {}, {}, {}]),
    ],
)
async def test_fetch_data_merges_its_input_into_records(
    call_node: CallNode,
    res: Resources,
    store: Store,
    data: Any,
    expected_extra: list[dict[str, Any]],
) -> None:
    await seed(store)
    result = await call_node("fetchData", {"selectedEntityId": "ent_1"}, data, resources=res)
    assert result["outputData"] == [
        {**extra, **row} for extra, row in zip(expected_extra, FETCHED, strict=True)
    ]


async def test_fetch_data_keys_orphan_values_by_property_id(
    call_node: CallNode, make_resources: MakeResources, tmp_path: Path
) -> None:
    """Only on SQLite: the Node backend's foreign keys are per connection there, so a value
    can outlive its property; PostgreSQL's foreign keys prevent that."""
    res = make_resources()
    res.store = store = await open_store(node_backend_sqlite(tmp_path / "node.sqlite"))
    await seed(
        store,
        rows=[
            (
                "r1",
                "2025-01-01T00:00:00.000Z",
                {"p_name": "A", "p_gone": "orphan", "p_id": "not the id"},
            )
        ],
        props=[*PROPS, ("p_id", "id", "text")],
    )
    result = await call_node("fetchData", {"entityId": "ent_1"}, resources=res)
    await store.close()
    assert result["outputData"] == [
        {"id": "r1", "createdAt": "2025-01-01T00:00:00.000Z", "Name": "A", "p_gone": "orphan"}
    ]


async def test_fetch_data_of_an_entity_without_records(
    call_node: CallNode, res: Resources, store: Store
) -> None:
    await seed(store, rows=[])
    result = await call_node("fetchData", {"entityId": "ent_1"}, {"x": 1}, resources=res)
    assert (result["outputData"], result["recordCount"]) == ([], 0)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "No entity configured for fetchData node"),
        ({"entityId": "", "entityName": "Machines"}, "No entity configured for fetchData node"),
        ({"entityId": "ent_missing"}, "Entity 'ent_missing' not found (entityId)"),
        ({"selectedEntityId": "ent_missing"}, "Entity 'ent_missing' not found (entityId)"),
    ],
)
async def test_fetch_data_config_errors(
    call_node: CallNode, res: Resources, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(NodeConfigError) as info:
        await call_node("fetchData", config, resources=res)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, [{"id": 1}]),
        ({"k": "v", "id": "input"}, [{"k": "v", "id": 1}]),
        ([{"k": 1}], [{"k": 1, "id": 1}]),
        ([{"k": 1}, {"k": 2}], [{"id": 1}]),  # lengths differ: nothing merged
        ([], [{"id": 1}]),
    ],
)
def test_merge_input_rule(data: Any, expected: list[dict[str, Any]]) -> None:
    assert merge_input([{"id": 1}], data) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (21.5, "number"),
        (3, "number"),
        ("2025-06-15", "date"),
        ("2025-06-15T10:00:00Z", "date"),
        ("42", "number"),
        ("-1.5", "number"),
        ("abc", "text"),
        (True, "text"),
        ({"a": 1}, "text"),
        ([1], "text"),
        ("12 kg", "text"),
    ],
)
def test_infer_type(value: Any, expected: str) -> None:
    assert infer_type(value) == expected


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"timestamp": "2025-06-15T10:00:00Z"}, "2025-06-15T10:00:00.000Z"),
        ({"timestamp": "2025-06-15T12:00:00.5+02:00"}, "2025-06-15T10:00:00.500Z"),
        ({"createdAt": "2025-06-15"}, "2025-06-15T00:00:00.000Z"),
        ({"timestamp": 1718445600000}, "2024-06-15T10:00:00.000Z"),
        ({"timestamp": 1718445600}, "2024-06-15T10:00:00.000Z"),
        ({"timestamp": "yesterday"}, "yesterday"),
        ({"timestamp": "", "createdAt": None}, "NOW"),
        ({}, "NOW"),
    ],
)
def test_created_at_of_a_record(record: dict[str, Any], expected: str) -> None:
    assert created_at(record, "NOW") == expected


async def entity_values(store: Store, entity_id: str) -> dict[str, dict[str, str]]:
    """record id → {property name: stored value}"""
    rows = await fetch_all(
        store,
        sa.select(records.c.id, properties.c.name, record_values.c.value)
        .join(record_values, record_values.c.recordId == records.c.id)
        .join(properties, properties.c.id == record_values.c.propertyId)
        .where(records.c.entityId == entity_id),
    )
    out: dict[str, dict[str, str]] = {}
    for rid, name, value in rows:
        out.setdefault(rid, {})[name] = value
    return out


READINGS = [
    {
        "id": "ignored",
        "timestamp": "2025-06-15T10:00:00Z",
        "status": "ok",
        "temperature": 21.5,
        "reading_date": "2025-06-15",
        "code": "42",
        "flag": True,
        "extra": {"a": [1, 2]},
        "note": None,
        "metadata": {"source": "x"},
        "raw": "<xml/>",
        "__index": 0,
        "entityId": "nope",
        "updatedAt": "x",
    },
    {
        "timestamp": "2025-06-15T10:05:00Z",
        "status": "alarm",
        "temperature": 90,
        "note": "",
        "code": "x7",
        "count": 3.0,
    },
]


async def test_save_records_to_entity_creates_properties_and_values(
    call_node: CallNode, res: Resources, store: Store
) -> None:
    await seed(store, props=PROPS, rows=[])
    result = await call_node(
        "saveRecords",
        {"entityId": "ent_1", "targetEntityName": "Machines"},
        READINGS,
        resources=res,
    )
    assert result["outputData"] == READINGS
    assert (result["entityId"], result["isTimeSeries"]) == ("ent_1", True)
    # status and temperature match Status/Temperature case-insensitively; note's only value is ""
    created = dict(
        await fetch_all(
            store,
            sa.select(properties.c.name, properties.c.type).where(properties.c.entityId == "ent_1"),
        )
    )
    assert created == {
        "Name": "text",
        "Temperature": "number",
        "Status": "text",
        "timestamp": "date",
        "reading_date": "date",
        "code": "number",
        "flag": "text",
        "extra": "text",
        "note": "text",
        "count": "number",
    }
    assert result["createdProperties"] == 7
    first, second = result["savedIds"]
    assert first != "ignored"
    values = await entity_values(store, "ent_1")
    assert values[first] == {
        "timestamp": "2025-06-15T10:00:00Z",
        "Status": "ok",
        "Temperature": "21.5",
        "reading_date": "2025-06-15",
        "code": "42",
        "flag": "true",
        "extra": '{"a":[1,2]}',
    }
    assert values[second] == {
        "timestamp": "2025-06-15T10:05:00Z",
        "Status": "alarm",
        "Temperature": "90",
        "note": "",
        "code": "x7",
        "count": "3",
    }
    stamps = dict(await fetch_all(store, sa.select(records.c.id, records.c.createdAt)))
    assert stamps == {first: "2025-06-15T10:00:00.000Z", second: "2025-06-15T10:05:00.000Z"}


async def test_saved_records_come_back_from_fetch_data_in_save_order(
    call_node: CallNode, res: Resources, store: Store
) -> None:
    await seed(store, props=[], rows=[])
    rows = [{"Name": f"m{i}", "Load": i} for i in range(25)]
    saved = await call_node("saveRecords", {"targetEntityId": "ent_1"}, rows, resources=res)
    assert saved["createdProperties"] == 2 and saved["isTimeSeries"] is False
    again = await call_node(
        "saveRecords", {"entityId": "ent_1"}, {"name": "last", "load": 99}, resources=res
    )
    assert again["createdProperties"] == 0 and len(again["savedIds"]) == 1
    fetched = await call_node("fetchData", {"entityId": "ent_1"}, resources=res)
    assert [(r["Name"], r["Load"]) for r in fetched["outputData"]] == (
        [(f"m{i}", str(i)) for i in range(25)] + [("last", "99")]
    )
    assert [r["id"] for r in fetched["outputData"]] == saved["savedIds"] + again["savedIds"]
    assert all(r["createdAt"].endswith("Z") for r in fetched["outputData"])


@pytest.mark.parametrize(
    ("data", "types"),
    [
        ([{"v": None}, {"v": ""}, {"v": "12"}], {"v": "number"}),
        ([{"v": "2025-01-01"}, {"v": 3}], {"v": "date"}),
        ([{"v": None}, {"w": ""}], {"v": "text", "w": "text"}),
        ([{"a": 1}, {"b": "x"}], {"a": "number", "b": "text"}),
    ],
)
async def test_save_records_types_from_first_non_empty_value(
    call_node: CallNode, res: Resources, store: Store, data: Any, types: dict[str, str]
) -> None:
    await seed(store, props=[], rows=[])
    await call_node("saveRecords", {"entityId": "ent_1"}, data, resources=res)
    created = dict(await fetch_all(store, sa.select(properties.c.name, properties.c.type)))
    assert created == types


@pytest.mark.parametrize(
    ("config", "data", "error", "text"),
    [
        (
            {"entityId": "ent_missing"},
            [{"a": 1}],
            NodeConfigError,
            "Entity 'ent_missing' not found (entityId)",
        ),
        ({"entityId": "ent_1"}, [{"a": 1}, "scalar"], NodeExecutionError, "record 1"),
        ({"entityId": "ent_1", "saveMode": "merge"}, [{"a": 1}], NodeConfigError, "saveMode"),
    ],
)
async def test_save_records_to_entity_errors_write_nothing(
    call_node: CallNode,
    res: Resources,
    store: Store,
    config: dict[str, Any],
    data: Any,
    error: type[Exception],
    text: str,
) -> None:
    await seed(store, props=[], rows=[])
    with pytest.raises(error) as info:
        await call_node("saveRecords", config, data, resources=res)
    assert text in str(info.value)
    assert await fetch_all(store, sa.select(records.c.id)) == []
    assert await fetch_all(store, sa.select(properties.c.id)) == []


def generic(name: str) -> sa.TableClause:
    return sa.table(
        name,
        *(
            sa.column(c)
            for c in ("id", "data", "workflowId", "executionId", "createdAt", "updatedAt")
        ),
    )


@pytest.mark.parametrize(
    ("config", "table"),
    [
        ({}, "saved_records"),
        ({"tableName": "sensor_log"}, "sensor_log"),
        ({"entityName": "Readings_2025"}, "Readings_2025"),
        ({"tableName": "t1", "entityName": "ignored"}, "t1"),
        ({"tableName": "", "entityName": "fallback"}, "fallback"),
    ],
)
async def test_save_records_without_entity_inserts_json_rows(
    call_node: CallNode, res: Resources, store: Store, config: dict[str, Any], table: str
) -> None:
    data = [{"id": "a1", "v": 1.5, "ok": True}, {"v": None}, {"id": 7, "nested": {"x": [1]}}]
    result = await call_node("saveRecords", config, data, resources=res)
    assert (result["tableName"], result["saveMode"]) == (table, "insert")
    assert result["outputData"] == data
    ids = result["savedIds"]
    assert ids[0] == "a1" and ids[2] == "7" and len(ids[1]) == 16
    rows = {r.id: r for r in await fetch_all(store, sa.select(generic(table)))}
    assert set(rows) == set(ids)
    assert json.loads(rows["a1"].data) == data[0] and json.loads(rows["7"].data) == data[2]
    assert (rows["a1"].workflowId, rows["a1"].executionId) == ("wf_test", "exec_test")
    assert rows["a1"].createdAt.endswith("Z") and rows["a1"].createdAt == rows["a1"].updatedAt


async def test_save_records_generic_upsert_updates_by_id(
    call_node: CallNode, res: Resources, store: Store
) -> None:
    config = {"tableName": "devices"}
    await call_node(
        "saveRecords", config, [{"id": "d1", "v": 1}, {"id": "d2", "v": 2}], resources=res
    )
    with pytest.raises(NodeExecutionError, match="saveMode upsert"):
        await call_node("saveRecords", config, {"id": "d1", "v": 9}, resources=res)
    result = await call_node(
        "saveRecords",
        {**config, "saveMode": "upsert"},
        [{"id": "d1", "v": 10}, {"id": "d3", "v": 3}, {"v": 4}],
        resources=res,
    )
    assert (result["updatedCount"], result["insertedCount"]) == (1, 2)
    rows = {r.id: r for r in await fetch_all(store, sa.select(generic("devices")))}
    assert {i: json.loads(r.data)["v"] for i, r in rows.items()} == {
        "d1": 10,
        "d2": 2,
        "d3": 3,
        result["savedIds"][2]: 4,
    }
    assert rows["d1"].updatedAt >= rows["d1"].createdAt


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"tableName": "workflows"}, "tableName"),
        ({"tableName": "records"}, "tableName"),
        ({"tableName": "Workflow_Executions"}, "tableName"),
        ({"tableName": "wos_executions"}, "tableName"),
        ({"tableName": "wos_anything_new"}, "tableName"),
        ({"tableName": "sqlite_master"}, "tableName"),
        ({"tableName": "users"}, "tableName"),
        ({"tableName": "x; DROP TABLE y"}, "tableName"),
        ({"tableName": "1abc"}, "tableName"),
        ({"tableName": "a" * 64}, "tableName"),
        ({"tableName": "naïve"}, "tableName"),
        ({"entityName": "My Entity"}, "entityName"),
        ({"entityName": "execution_logs"}, "entityName"),
    ],
)
async def test_save_records_refuses_unsafe_table_names(
    call_node: CallNode, res: Resources, store: Store, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(NodeConfigError) as info:
        await call_node("saveRecords", config, [{"a": 1}], resources=res)
    assert str(info.value).startswith(f"Invalid {field} ")


async def test_save_records_refuses_an_existing_foreign_table(
    call_node: CallNode, res: Resources, store: Store
) -> None:
    async with store.write() as conn:
        await conn.execute(sa.text("CREATE TABLE plant_kpis (name TEXT, value TEXT)"))
    with pytest.raises(NodeExecutionError, match="not a saveRecords table"):
        await call_node("saveRecords", {"tableName": "plant_kpis"}, [{"a": 1}], resources=res)


async def test_record_nodes_without_a_store_fail_clearly(call_node: CallNode) -> None:
    with pytest.raises(NodeExecutionError, match="No database"):
        await call_node("fetchData", {"entityId": "e"})
    with pytest.raises(NodeExecutionError, match="No database"):
        await call_node("saveRecords", {}, [{"a": 1}])
