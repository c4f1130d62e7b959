"""Shared test helpers: store URLs per backend (SQLite file, throwaway PostgreSQL database,
in-memory), seeding the Node backend's rows on any store, fixtures."""

import asyncio
import json
import os
import secrets
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from database.interfaces import EXECUTION_COLUMNS, RUN_COLUMNS

LOG_COLUMNS = ("id", "executionId", "nodeId", "nodeType", "nodeLabel", "status", "inputData")
LOG_COLUMNS += ("outputData", "error", "duration", "timestamp")
FIXTURES = Path(__file__).parent / "fixtures"
NODE_SCHEMA = FIXTURES / "node_schema.sql"
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SQL_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ALL_STORES = [*SQL_STORES, "memory"]
"""`store`/`service` params: every backend (the contract suite), or those that speak SQL."""
on_sql_stores = pytest.mark.parametrize("service", SQL_STORES, indirect=True)
"""For in-process service tests that write raw SQL as the Node backend does."""
"""Runs a test of the in-process `service` fixture on SQLite, PostgreSQL and memory."""


def server_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Mandatory under CI (fail), skipped with a message on a machine without the server."""
    if server_up(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (required under CI)")
    pytest.skip(message)


def node_backend_sqlite(path: Path) -> str:
    """Create the database exactly as the Node backend does; returns its sqlite URL."""
    conn = sqlite3.connect(path)
    conn.executescript(NODE_SCHEMA.read_text())
    conn.close()
    return f"sqlite:///{path}"


async def postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test (dropped afterwards)."""
    import asyncpg

    require_server("PostgreSQL", "127.0.0.1", 5432)
    name = f"wos_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextmanager
def postgres_database_sync() -> Iterator[str]:
    """`postgres_database` for synchronous callers (the end-to-end tests)."""
    require_server("PostgreSQL", "127.0.0.1", 5432)
    name = f"wos_test_{secrets.token_hex(4)}"
    asyncio.run(postgres_query(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(postgres_query(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def postgres_query(url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    """One statement on PostgreSQL (`$1`-style parameters); rows as dicts."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(query, *params)]
    finally:
        await conn.close()


@asynccontextmanager
async def store_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A URL for a fresh store of `kind` (sqlite: a file the Node backend created first)."""
    if kind == "sqlite":
        yield node_backend_sqlite(tmp_path / "node.sqlite")
    elif kind == "postgres":
        async for url in postgres_database():
            yield url
    else:
        yield f"memory://{secrets.token_hex(4)}"


async def seed_rows(store: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows as the Node backend (or another process) would: SQL on the SQL stores, the
    in-memory store's dictionaries otherwise (missing columns are NULL, as in SQL)."""
    if hasattr(store, "write"):
        from database import schema

        async with store.write() as conn:
            await conn.execute(schema.metadata.tables[table].insert(), rows)
        return
    for row in rows:
        if table == "workflows":
            store.put_workflow(row["id"], row["data"], row["name"], row.get("organizationId"))
        elif table == "entities":
            store.entities.put_entity(
                row["id"], row.get("name"), organization_id=row.get("organizationId")
            )
        elif table == "properties":
            store.entities.properties[row["id"]] = dict(row)
        elif table == "records":
            store.entities.records[row["id"]] = dict(row)
        elif table == "record_values":
            store.entities.values.append(dict(row))
        elif table == "workflow_executions":
            store.executions[row["id"]] = {**dict.fromkeys(EXECUTION_COLUMNS), **row}
        elif table == "wos_executions":
            store.runs[row["executionId"]] = {
                **dict.fromkeys(RUN_COLUMNS),
                "leaseOwner": None,
                "leaseExpiresAt": None,
                **row,
            }
        elif table == "execution_logs":
            store.logs.setdefault(row["executionId"], []).append(
                {**{c: None for c in LOG_COLUMNS}, **row}
            )
        elif table != "organizations":
            raise ValueError(f"the in-memory store has no table {table!r}")


def load_fixture(name: str, port: int | None = None) -> dict[str, Any]:
    text = (FIXTURES / f"{name}.json").read_text()
    if port is not None:
        text = text.replace("PORT", str(port))
    data: dict[str, Any] = json.loads(text)
    return data
