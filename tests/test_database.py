"""SQLite-only behaviour of the store (the contract is tests/test_store_contract.py): the Node
backend's schema used as is, the write lock shared with other processes, compiled statements,
and the package's import hygiene."""

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

from database import open_store
from database.generic import SERVICE_TABLES
from database.interfaces import NewExecution
from database.sqlite import SqliteStore
from tests.support import node_backend_sqlite


async def add(store: object, eid: str) -> None:
    assert isinstance(store, SqliteStore)
    await store.create_execution(
        NewExecution(
            execution_id=eid,
            workflow_id="wf1",
            workflow_name="WF",
            organization_id="org",
            inputs={"x": 1},
            definition='{"nodes": []}',
            mode="inline",
        )
    )


async def test_node_backend_schema_is_used_as_is(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    url = node_backend_sqlite(path)
    before = (
        sqlite3.connect(path)
        .execute("SELECT sql FROM sqlite_master WHERE name='workflow_executions'")
        .fetchone()
    )
    store = await open_store(url)
    await add(store, "e1")
    await store.close()
    conn = sqlite3.connect(path)
    after = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name='workflow_executions'"
    ).fetchone()
    assert before == after
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT status FROM workflow_executions").fetchall() == [("pending",)]
    # the service's index on the log rows is added to the Node backend's existing table
    indexes = {r[1] for r in conn.execute("PRAGMA index_list('execution_logs')")}
    assert "idx_wos_logs_execution" in indexes


async def test_group_commit_waits_off_the_loop_while_another_process_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    store = await open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. the Node backend in the middle of a write
    pending = asyncio.create_task(add(store, "e1"))
    await asyncio.sleep(0.2)  # the event loop keeps running while the write waits for the lock
    assert not pending.done()
    other.execute("COMMIT")
    await asyncio.wait_for(pending, 5)
    row = await store.get_execution("e1")
    assert row is not None and row["status"] == "pending"
    other.close()
    await store.close()


def test_importing_the_package_and_the_engine_imports_no_sqlalchemy() -> None:
    code = (
        "import flows.engine, database, database.interfaces, sys; "
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_generic_table_rules_know_every_table_of_the_schema() -> None:
    from database.schema import metadata

    assert set(metadata.tables) == SERVICE_TABLES


async def test_unknown_scheme_is_refused() -> None:
    try:
        await open_store("mysql://root@localhost/x")
    except ValueError as exc:
        assert "Unsupported DATABASE_URL scheme 'mysql'" in str(exc)
    else:
        raise AssertionError("mysql accepted")


def test_group_commit_statements_are_compiled_once_for_the_sqlite_cursor(tmp_path: Path) -> None:
    from database.batch import _FINISH_EXEC, _sqlite_statement
    from database.sqlite import _sqlite_engines

    _, engine = _sqlite_engines(open_url(tmp_path))
    keys = ("b_id", "b_status", "b_error", "b_now", "b_results")
    compiled = _sqlite_statement(_FINISH_EXEC, keys, engine.dialect)
    assert compiled is not None and compiled[0].startswith("UPDATE workflow_executions SET")
    assert _sqlite_statement(_FINISH_EXEC, keys, engine.dialect) is compiled  # cached
    engine.dispose()


def open_url(tmp_path: Path) -> "object":
    from sqlalchemy.engine import make_url

    return make_url(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite'}")
