"""mysql node (contract §4.15) against the machine's MariaDB on 127.0.0.1:3306 (root, no password):
each test gets a throwaway database; the read-only guard is also tested without a server."""

import datetime as dt
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiomysql
import pymysql
import pytest

from errors import NodeConfigError, NodeExecutionError
from jsonutil import json_value
from models import NodeDef
from tasks import get_spec, mysql_query
from tasks.context import Resources
from tasks.mysql_guard import check_statement
from tasks.run_node import run_with_retries
from tests.conftest import CallNode, MakeCtx, MakeResources
from tests.support import require_server

HOST, PORT, ROOT = "127.0.0.1", 3306, "root"
SECRET = "Sup3r-Secret-Pa55word"

SCHEMA = """
CREATE TABLE items (
  id INT PRIMARY KEY AUTO_INCREMENT,
  name VARCHAR(50) NOT NULL,
  price DECIMAL(10,2),
  qty DECIMAL(12,0),
  day DATE,
  seen DATETIME(3),
  duration TIME,
  payload BLOB,
  note VARCHAR(50) NULL
)"""
ROWS = [
    "(1, 'bolt', 12.50, 100, '2024-03-01', '2024-03-01 08:30:15.250', '01:30:00', "
    "X'deadbeef', NULL)",
    "(2, 'nut', 0.05, 2500, '2023-12-31', '2023-12-31 23:59:59', '-00:00:05', 'text blob', 'ok')",
    "(3, 'gear', NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
]


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh database with the `items` table (dropped afterwards)."""
    require_server("MariaDB", HOST, PORT)
    name = f"wos_test_{secrets.token_hex(4)}"
    conn = await aiomysql.connect(host=HOST, port=PORT, user=ROOT, password="", autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{name}`")
            await cur.execute(f"USE `{name}`")
            await cur.execute(SCHEMA)
            await cur.execute("INSERT INTO items VALUES " + ", ".join(ROWS))
        yield name
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def cfg(database: str, query: str, **extra: Any) -> dict[str, Any]:
    return {
        "mysqlHost": HOST,
        "mysqlPort": str(PORT),
        "mysqlDatabase": database,
        "mysqlUsername": ROOT,
        "mysqlPassword": "",
        "mysqlQuery": query,
        **extra,
    }


async def count_items(database: str) -> int:
    conn = await aiomysql.connect(host=HOST, port=PORT, user=ROOT, password="", db=database)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM items")
            (count,) = await cur.fetchone()
            return int(count)
    finally:
        conn.close()


async def test_mysql_rows_are_json_safe(call_node: CallNode, database: str) -> None:
    result = await call_node("mysql", cfg(database, "SELECT * FROM items ORDER BY id"))
    assert result["success"] is True
    assert result["rowCount"] == 3
    assert result["message"] == "MySQL query returned 3 rows"
    assert result["outputData"] == [
        {
            "id": 1,
            "name": "bolt",
            "price": 12.5,
            "qty": 100,
            "day": "2024-03-01",
            "seen": "2024-03-01T08:30:15.250000",
            "duration": "01:30:00",
            "payload": "3q2+7w==",
            "note": None,
        },
        {
            "id": 2,
            "name": "nut",
            "price": 0.05,
            "qty": 2500,
            "day": "2023-12-31",
            "seen": "2023-12-31T23:59:59",
            "duration": "-00:00:05",
            "payload": "text blob",
            "note": "ok",
        },
        {
            "id": 3,
            "name": "gear",
            "price": None,
            "qty": None,
            "day": None,
            "seen": None,
            "duration": None,
            "payload": None,
            "note": None,
        },
    ]


@pytest.mark.parametrize(
    ("query", "params", "names"),
    [
        ("SELECT name FROM items WHERE id = %s", [2], ["nut"]),
        ("SELECT name FROM items WHERE id IN (%s, %s) ORDER BY id", [1, 3], ["bolt", "gear"]),
        ("SELECT name FROM items WHERE name = %(n)s", {"n": "gear"}, ["gear"]),
        ("SELECT name FROM items WHERE price > %s ORDER BY id", ["0.10"], ["bolt"]),
        ("SELECT name FROM items WHERE name = %s", ["x' OR '1'='1"], []),
        ("SELECT name FROM items WHERE name LIKE %s ORDER BY id", ["%t"], ["bolt", "nut"]),
        ("SELECT name FROM items WHERE id = %s", "[1]", ["bolt"]),
        ("SELECT name FROM items WHERE name LIKE 'b%' ORDER BY id", None, ["bolt"]),
        ("SELECT name FROM items WHERE name LIKE 'b%' ORDER BY id", [], ["bolt"]),
    ],
)
async def test_mysql_parameterised_queries(
    call_node: CallNode, database: str, query: str, params: Any, names: list[str]
) -> None:
    config = cfg(database, query) | ({} if params is None else {"mysqlParams": params})
    result = await call_node("mysql", config)
    assert [row["name"] for row in result["outputData"]] == names


REFUSED = [
    "DELETE FROM items",
    "delete from items where id = 1",
    "UPDATE items SET name = 'x'",
    "INSERT INTO items (name) VALUES ('x')",
    "DROP TABLE items",
    "TRUNCATE items",
    "/* harmless? */ DELETE FROM items",
    "-- a comment\nDELETE FROM items",
    "# a comment\n  UPDATE items SET qty = 0",
    "SELECT * FROM items INTO OUTFILE '/tmp/wos_items.txt'",
    "SELECT 1 /*! , (DELETE FROM items) */",
    "CALL something()",
    "SET @a = 1",
]
MULTIPLE = [
    "select 1; drop table items",
    "SELECT 1; SELECT 2",
    "SELECT 'a'; DELETE FROM items; -- trailing",
    "  select 1  ;  ",
    "SELECT 1 -- ; DROP TABLE items",
]
ALLOWED = [
    ("SELECT 1", "SELECT"),
    ("-- leading comment\nSELECT 1", "SELECT"),
    ("/* block */ select 1", "SELECT"),
    ("# hash comment\nSELECT 1", "SELECT"),
    ("SELECT 'a;b' AS x", "SELECT"),
    ('SELECT "it\'s; fine" AS x', "SELECT"),
    ("SELECT 'it''s; fine', 'back\\'slash;' AS x", "SELECT"),
    ("SELECT `we;ird` FROM t", "SELECT"),
    ("(SELECT 1) UNION (SELECT 2)", "SELECT"),
    ("SHOW TABLES", "SHOW"),
    ("DESCRIBE items", "DESCRIBE"),
    ("DESC items", "DESC"),
    ("EXPLAIN SELECT * FROM items", "EXPLAIN"),
    ("WITH c AS (SELECT 1 AS x) SELECT x FROM c", "WITH"),
    ("SELECT 2--1", "SELECT"),
]


@pytest.mark.parametrize("query", REFUSED)
def test_mysql_guard_refuses_writes(query: str) -> None:
    with pytest.raises(NodeConfigError, match="mysqlReadOnly"):
        check_statement(query, read_only=True)


@pytest.mark.parametrize("query", MULTIPLE)
@pytest.mark.parametrize("read_only", [True, False])
def test_mysql_guard_refuses_multiple_statements(query: str, read_only: bool) -> None:
    with pytest.raises(NodeConfigError, match="single statement"):
        check_statement(query, read_only=read_only)


@pytest.mark.parametrize(("query", "keyword"), ALLOWED)
def test_mysql_guard_allows_reads(query: str, keyword: str) -> None:
    assert check_statement(query, read_only=True) == keyword


@pytest.mark.parametrize("query", ["", "   ", "-- only a comment", "/* x */ ;"])
def test_mysql_guard_refuses_empty_queries(query: str) -> None:
    with pytest.raises(NodeConfigError, match="mysqlQuery"):
        check_statement(query, read_only=True)


@pytest.mark.parametrize("query", REFUSED[:9] + MULTIPLE)
async def test_mysql_refused_statements_never_reach_the_server(
    call_node: CallNode, database: str, query: str
) -> None:
    with pytest.raises(NodeConfigError):
        await call_node("mysql", cfg(database, query))
    assert await count_items(database) == 3


async def test_mysql_read_only_transaction_backs_up_the_guard(
    call_node: CallNode, database: str
) -> None:
    """A SELECT that writes through a stored function passes the keyword check but is refused
    by the server inside START TRANSACTION READ ONLY."""
    conn = await aiomysql.connect(
        host=HOST, port=PORT, user=ROOT, password="", db=database, autocommit=True
    )
    async with conn.cursor() as cur:
        await cur.execute(
            "CREATE FUNCTION add_item() RETURNS INT MODIFIES SQL DATA "
            "BEGIN INSERT INTO items (name) VALUES ('sneaky'); RETURN 1; END"
        )
    conn.close()
    with pytest.raises(NodeExecutionError, match="MySQL query failed: .*READ ONLY") as info:
        await call_node("mysql", cfg(database, "SELECT add_item() AS x"))
    assert info.value.retryable is False
    assert await count_items(database) == 3
    result = await call_node("mysql", cfg(database, "SELECT add_item() AS x", mysqlReadOnly=False))
    assert result["outputData"] == [{"x": 1}]
    assert await count_items(database) == 4


@pytest.mark.parametrize("flag", [False, "false", 0])
async def test_mysql_writes_when_read_only_is_off(
    call_node: CallNode, database: str, flag: Any
) -> None:
    result = await call_node(
        "mysql",
        cfg(
            database,
            "INSERT INTO items (name, price) VALUES (%s, %s)",
            mysqlParams=["washer", 0.2],
            mysqlReadOnly=flag,
        ),
    )
    assert result["outputData"] == []
    assert (result["rowCount"], result["affectedRows"], result["insertId"]) == (1, 1, 4)
    assert result["message"] == "MySQL statement affected 1 rows"
    rows = await call_node("mysql", cfg(database, "SELECT name, price FROM items WHERE id = 4"))
    assert rows["outputData"] == [{"name": "washer", "price": 0.2}]
    update = await call_node("mysql", cfg(database, "UPDATE items SET qty = 1", mysqlReadOnly=flag))
    assert update["affectedRows"] == 4


async def test_mysql_write_refused_by_default(call_node: CallNode, database: str) -> None:
    with pytest.raises(NodeConfigError, match="DELETE statement refused"):
        await call_node("mysql", cfg(database, "DELETE FROM items"))
    assert await count_items(database) == 3


async def test_mysql_bad_password_is_a_clear_error_without_the_password(
    call_node: CallNode, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(NodeExecutionError) as info:
        await call_node("mysql", cfg(database, "SELECT 1", mysqlPassword=SECRET))
    text = str(info.value)
    assert text.startswith("MySQL query failed: Access denied for user 'root'")
    assert "(error 1045)" in text
    assert info.value.retryable is False
    assert SECRET not in text
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT * FROM missing_table", "doesn't exist (error 1146)"),
        ("SELECT * FORM items WHERE", "error 1064"),
        ("SELECT nope FROM items", "Unknown column 'nope'"),
    ],
)
async def test_mysql_server_errors(
    call_node: CallNode, database: str, query: str, message: str
) -> None:
    with pytest.raises(NodeExecutionError, match="^MySQL query failed: ") as info:
        await call_node("mysql", cfg(database, query))
    assert message in str(info.value)
    assert info.value.retryable is False


async def test_mysql_unknown_database(call_node: CallNode) -> None:
    require_server("MariaDB", HOST, PORT)
    with pytest.raises(NodeExecutionError, match="Unknown database 'wos_no_such_db'"):
        await call_node("mysql", cfg("wos_no_such_db", "SELECT 1"))


async def test_mysql_unreachable_server_is_retryable(call_node: CallNode) -> None:
    with pytest.raises(NodeExecutionError, match="MySQL query failed: Can't connect") as info:
        await call_node("mysql", cfg("test", "SELECT 1", mysqlPort="1"))
    assert info.value.retryable is True


async def test_mysql_unreachable_server_is_tried_twice(
    make_ctx: MakeCtx, resources: Resources
) -> None:
    node = NodeDef(
        id="n_my", type="mysql", config=cfg("test", "SELECT 1", mysqlPort="1", retryDelayMs=1)
    )
    with pytest.raises(NodeExecutionError, match="Can't connect") as info:
        await run_with_retries(node, None, make_ctx("mysql", resources=resources))
    assert info.value.attempts == 2


async def test_mysql_silent_server_hits_the_connect_timeout(
    call_node: CallNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port that accepts connections but never greets (not a MySQL server)."""
    monkeypatch.setattr(mysql_query, "CONNECT_TIMEOUT_S", 0.3)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(
            NodeExecutionError,
            match="no connection to 127.0.0.1:.* in time "
            r"\(connect timeout 0.3 s\)",
        ) as info:
            await call_node("mysql", cfg("test", "SELECT 1", mysqlPort=str(port)))
    assert info.value.retryable is True


async def test_mysql_query_timeout_kills_the_statement(call_node: CallNode, database: str) -> None:
    started = time.monotonic()
    with pytest.raises(NodeExecutionError, match=r"no answer within 0\.5 s \(mysqlQueryTimeout\)"):
        await call_node("mysql", cfg(database, "SELECT SLEEP(20) AS s", mysqlQueryTimeout="0.5"))
    assert time.monotonic() - started < 5
    conn = await aiomysql.connect(host=HOST, port=PORT, user=ROOT, password="")
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE INFO LIKE 'SELECT SLEEP(20)%'"
        )
        (running,) = await cur.fetchone()
    conn.close()
    assert running == 0


async def test_mysql_pools_connections_per_dsn(
    call_node: CallNode, database: str, resources: Resources
) -> None:
    first = await call_node("mysql", cfg(database, "SELECT CONNECTION_ID() AS id"))
    second = await call_node("mysql", cfg(database, "SELECT CONNECTION_ID() AS id"))
    assert first["outputData"] == second["outputData"]
    assert len(resources.mysql_pools) == 1
    await call_node("mysql", cfg("test", "SELECT 1"))
    assert len(resources.mysql_pools) == 2
    assert not any(SECRET in repr(key) for key in resources.mysql_pools)
    await resources.aclose()
    assert resources.mysql_pools == {}


async def test_mysql_pool_survives_a_failed_statement(call_node: CallNode, database: str) -> None:
    with pytest.raises(NodeExecutionError):
        await call_node("mysql", cfg(database, "SELECT * FROM missing_table"))
    result = await call_node("mysql", cfg(database, "SELECT COUNT(*) AS n FROM items"))
    assert result["outputData"] == [{"n": 3}]


async def test_mysql_envelope_and_logs_hold_no_password(
    make_resources: MakeResources,
    make_ctx: MakeCtx,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user with a real password: the password works, and appears nowhere we write."""
    caplog.set_level(logging.DEBUG)
    user = f"wos_{secrets.token_hex(3)}"
    conn = await aiomysql.connect(host=HOST, port=PORT, user=ROOT, password="", autocommit=True)
    async with conn.cursor() as cur:
        await cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{SECRET}'")
        await cur.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'")
    try:
        node = NodeDef(
            id="n_my",
            type="mysql",
            config=cfg(
                database,
                "SELECT name FROM items WHERE id = 1",
                mysqlUsername=user,
                mysqlPassword=SECRET,
            ),
        )
        result = await run_with_retries(node, None, make_ctx("mysql", resources=make_resources()))
        assert result["outputData"] == [{"name": "bolt"}]
        assert SECRET not in repr(result)
        bad = node.model_copy(
            update={
                "config": {**node.config, "mysqlQuery": "DELETE FROM items", "mysqlReadOnly": False}
            }
        )
        with pytest.raises(NodeExecutionError, match="command denied") as info:
            await run_with_retries(bad, None, make_ctx("mysql", resources=make_resources()))
        assert SECRET not in str(info.value)
        assert SECRET not in caplog.text
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP USER '{user}'@'%'")
        conn.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mysqlQuery": ""}, r"No query configured for MySQL node \(mysqlQuery\)"),
        ({}, r"No query configured for MySQL node \(mysqlQuery\)"),
        ({"mysqlQuery": "SELECT 1", "mysqlPort": "abc"}, "mysqlPort must be a number"),
        ({"mysqlQuery": "SELECT 1", "mysqlPort": "70000"}, "mysqlPort must be between"),
        ({"mysqlQuery": "SELECT %s", "mysqlParams": "not json"}, "mysqlParams must be a JSON"),
        ({"mysqlQuery": "SELECT %s", "mysqlParams": 5}, "mysqlParams must be a list"),
        ({"mysqlQuery": "SELECT 1", "mysqlQueryTimeout": "soon"}, "mysqlQueryTimeout"),
        ({"mysqlQuery": "SELECT 1", "mysqlQueryTimeout": -1}, "mysqlQueryTimeout"),
    ],
)
async def test_mysql_config_errors(
    call_node: CallNode, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(NodeConfigError, match=message):
        await call_node("mysql", config)


@pytest.mark.parametrize(
    ("query", "params"),
    [
        ("SELECT %s, %s AS x", [1]),
        ("SELECT %(a)s AS x", {"b": 1}),
        ("SELECT '100%' AS x, %s AS y", [1]),
    ],
)
async def test_mysql_params_must_match_placeholders(
    call_node: CallNode, database: str, query: str, params: Any
) -> None:
    with pytest.raises(NodeConfigError, match="mysqlParams do not match the placeholders"):
        await call_node("mysql", cfg(database, query, mysqlParams=params))


async def test_mysql_defaults_to_localhost_3306(call_node: CallNode, database: str) -> None:
    result = await call_node(
        "mysql",
        {
            "mysqlDatabase": database,
            "mysqlUsername": ROOT,
            "mysqlHost": "",
            "mysqlPort": "",
            "mysqlQuery": "SELECT @@port AS port",
        },
    )
    assert result["outputData"] == [{"port": 3306}]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("10.00"), 10),
        (Decimal("-0.125"), -0.125),
        (b"\x01", "AQ=="),
        (b"caf\xc3\xa9", "café"),
        (bytearray(b"\xff\x00"), "/wA="),
        (dt.timedelta(hours=838, minutes=59, seconds=59), "838:59:59"),
        (dt.timedelta(seconds=1, microseconds=500), "00:00:01.000500"),
        (dt.time(7, 5), "07:05:00"),
        ({"b", "a"}, ["a", "b"]),
        ("plain", "plain"),
        (None, None),
    ],
)
def test_mysql_json_safe_values(value: Any, expected: Any) -> None:
    assert json_value(value) == expected


@pytest.mark.parametrize("password", ["~", "~^", "~^!"])
@pytest.mark.parametrize("connecting", [True, False])
def test_mysql_error_text_redacts_short_passwords(password: str, connecting: bool) -> None:
    """Passwords of any length are redacted (the 4-character minimum of old is gone)."""
    exc = pymysql.err.OperationalError(1045, f"Access denied (using password '{password}')")
    error = mysql_query._failure(exc, password, connecting=connecting, read_only=True)
    assert str(error) == "MySQL query failed: Access denied (using password '***') (error 1045)"


def test_mysql_registration() -> None:
    spec = get_spec("mysql")
    assert (spec.network, spec.retries) == (True, 1)
