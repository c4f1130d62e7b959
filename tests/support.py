"""Shared test helpers: database URLs (SQLite file, throwaway PostgreSQL database), fixtures."""

import json
import os
import secrets
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
NODE_SCHEMA = FIXTURES / "node_schema.sql"
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


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


def load_fixture(name: str, port: int | None = None) -> dict[str, Any]:
    text = (FIXTURES / f"{name}.json").read_text()
    if port is not None:
        text = text.replace("PORT", str(port))
    data: dict[str, Any] = json.loads(text)
    return data
