"""SQLite-only behaviour of the store (the contract is tests/test_store_contract.py): the Node
backend's schema used as is, the write lock shared with other processes, compiled statements,
and the package's import hygiene."""

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

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


async def commit_all(errors: dict[int, Exception]) -> tuple[list[list[str]], list[object]]:
    """Three operations group-committed by a fake commit that raises `errors[size of the
    batch]`; returns the batches it was given and each waiter's outcome."""
    from database.batch import GroupCommit, Op

    batches: list[list[str]] = []

    async def commit(batch: list[Op]) -> list[bool]:
        batches.append([op.execution_id for op in batch])
        if len(batch) in errors and (len(batch) > 1 or batch[0].execution_id == "bad"):
            raise errors[len(batch)]
        return [True] * len(batch)

    group = GroupCommit(commit)
    outcomes = await asyncio.gather(
        *(group.submit(Op("finish", eid, {})) for eid in ("a", "bad", "c")),
        return_exceptions=True,
    )
    return batches, outcomes


@pytest.mark.parametrize(
    "duplicate",
    [
        sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")),
        # text with a lone surrogate (a node output parsed from "\\ud800") has no UTF-8 form
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ],
)
async def test_group_commit_replays_one_by_one_after_a_row_error(duplicate: Exception) -> None:
    """Bug 3: a constraint violation or a value that cannot be encoded fails only the operation
    that caused it."""
    batches, outcomes = await commit_all({3: duplicate, 1: duplicate})
    assert batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert outcomes[0] is True and outcomes[2] is True
    assert outcomes[1] is duplicate


async def test_group_commit_fails_the_whole_batch_at_once_on_other_errors() -> None:
    """A lock timeout or a lost connection is not replayed 500 times: every waiter gets it."""
    locked = sa.exc.OperationalError("UPDATE", {}, Exception("database is locked"))
    batches, outcomes = await commit_all({3: locked})
    assert batches == [["a", "bad", "c"]]
    assert outcomes == [locked, locked, locked]


def test_interfaces_column_lists_agree_with_the_schema() -> None:
    """`database.interfaces` names the columns without SQLAlchemy; the tables must have them."""
    from database.interfaces import EXECUTION_COLUMNS, LIST_COLUMNS, RUN_COLUMNS
    from database.schema import executions, runs

    assert tuple(executions.c.keys()) == EXECUTION_COLUMNS
    assert set(RUN_COLUMNS) <= set(runs.c.keys())
    assert set(runs.c.keys()) - set(RUN_COLUMNS) == {
        *("executionId", "seq", "leaseOwner", "leaseExpiresAt", "createdAt", "crashResumes"),
        *("turn", "orgGroup"),  # the claim order's fairness bookkeeping (database.claim_order)
    }
    assert set(LIST_COLUMNS) <= set(EXECUTION_COLUMNS)
