"""SQLite: the engines and pragmas, the writer thread with its connection, the 0.5 ms lock poller,
and the small reads and writes done on the event loop when they cannot wait.

Each transaction runs whole in a thread (one thread hop per transaction instead of one per
statement); writes run on a single writer thread, so this process never contends with itself
for SQLite's lock (another process, the Node backend or a worker, still may).
"""

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from database.batch import Op, apply_batch
from database.sql import BUSY, SqlStore

R = TypeVar("R")
BUSY_TIMEOUT_MS = 30000
LOCK_POLL_S = 0.0005


class SqliteStore(SqlStore):
    """`SqlStore` on a SQLite file (WAL, foreign keys off: Decision 11)."""

    DRIVER = "sqlite+aiosqlite"

    def __init__(self, engine: AsyncEngine, sync_engine: sa.Engine) -> None:
        super().__init__(engine)
        self.sync_engine = sync_engine
        self._write_conn: sa.Connection | None = None
        self._write_lock = threading.Lock()
        self._loop_conn: sa.Connection | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="wos-sqlite-write")
        self._readers = ThreadPoolExecutor(4, thread_name_prefix="wos-sqlite-read")

    @classmethod
    def connect(cls, url: sa.URL) -> "SqliteStore":
        return cls(*_sqlite_engines(url))

    def _apply(self, conn: sa.Connection, batch: list[Op]) -> list[bool]:
        # one database-wide write lock: no row locks; rows go straight to the sqlite3 cursor
        return apply_batch(conn, batch, executemany=True, lock_rows=False, notify=False)

    async def close(self) -> None:
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        await asyncio.get_running_loop().run_in_executor(self._writer, self._close_write_conn)
        for pool in (self._writer, self._readers):
            pool.shutdown(wait=True)
        self.sync_engine.dispose()
        await self.engine.dispose()

    async def _run(self, op: Callable[[sa.Connection], R], *, write: bool) -> R:
        """The whole transaction in a thread: writes on the single writer thread."""
        pool = self._writer if write else self._readers
        return await asyncio.get_running_loop().run_in_executor(pool, self._call, op, write)

    def _call(self, op: Callable[[sa.Connection], R], write: bool) -> R:
        if write:
            with self._write_lock:
                return self._write(op, wait=True)  # type: ignore[return-value]
        with self.sync_engine.connect() as conn:
            with conn.begin():
                return op(conn)

    def _write(self, op: Callable[[sa.Connection], R], *, wait: bool) -> R | None:
        """`op` in a write transaction on the connection the writer keeps (no pool checkout per
        transaction); with `wait=False`, None at once when another process holds the lock.
        The caller holds `_write_lock`."""
        if self._write_conn is None:
            self._write_conn = self.sync_engine.connect().execution_options(wos_write=True)
        conn = self._write_conn
        try:
            if not _try_begin_immediate(conn.connection.dbapi_connection, wait=wait):
                return None
            with conn.begin():  # the BEGIN hook sees the open transaction and adds none
                return op(conn)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                self._close_write_conn()
            raise

    def _write_now(self, op: Callable[[sa.Connection], R]) -> R | None:
        """A small write on the calling (event loop) thread when neither this process's writer
        thread nor another process holds the write lock (~0.1 ms, where the thread round trip
        costs more than the write); None, at once, when either does."""
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            return self._write(op, wait=False)
        finally:
            self._write_lock.release()

    def _read_now(self, op: Callable[[sa.Connection], R]) -> R | object:
        """A one-row read on the event loop thread, on a connection of its own that never
        waits (busy_timeout 0): WAL readers take no lock, so only SQLite's rare busy cases (WAL
        recovery) return `BUSY`, and the caller falls back to a reader thread."""
        if self._loop_conn is None:
            self._loop_conn = self.sync_engine.connect()
            self._loop_conn.connection.dbapi_connection.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]
        try:
            with self._loop_conn.begin():
                return op(self._loop_conn)
        except sa.exc.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return BUSY
            raise

    def _close_write_conn(self) -> None:
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None


def _try_begin_immediate(dbapi_conn: Any, *, wait: bool) -> bool:
    """BEGIN IMMEDIATE on a raw sqlite3 connection; False when the write lock is taken and
    `wait` is off. Waiting polls the lock every 0.5 ms: SQLite's own busy handler sleeps 1, 2, 5,
    10 … 100 ms between tries, so a writer of another process that commits every few ms (a
    worker's group commits) kept the API's inserts waiting for tens of ms; the poller's sleep
    releases the GIL, so it costs little."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout = 0")
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    try:
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                if not wait:
                    return False
            time.sleep(LOCK_POLL_S)
    finally:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.close()


def _sqlite_pragmas(engine: sa.Engine, *, thread_engine: bool) -> None:
    """Write transactions of the thread-pool engine are begun by `SqliteStore._write` (it polls the
    lock); the async engine's run on the event loop's behalf and must not sleep, so they wait
    in SQLite's busy handler."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = OFF")  # Decision 11
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if not conn.get_execution_options().get("wos_write"):
            conn.exec_driver_sql("BEGIN")
        elif not (thread_engine and conn.connection.dbapi_connection.in_transaction):  # type: ignore[union-attr]
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_engines(url: sa.URL) -> tuple[AsyncEngine, sa.Engine]:
    path = url.database or ""
    if path and path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, pool_size=4, max_overflow=4)
    sync_engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        poolclass=sa.pool.QueuePool,
        pool_size=6,
        max_overflow=4,
        connect_args={"timeout": 30, "check_same_thread": False},
    )
    _sqlite_pragmas(engine.sync_engine, thread_engine=False)
    _sqlite_pragmas(sync_engine, thread_engine=True)
    return engine, sync_engine
