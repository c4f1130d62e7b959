"""The mysql node: one statement on a MySQL/MariaDB server through a pooled aiomysql connection.

Read-only by default (`mysqlReadOnly`): the statement must be SELECT/SHOW/DESCRIBE/DESC/EXPLAIN
(or WITH … SELECT) and also runs inside `START TRANSACTION READ ONLY`, so the server refuses a
write the keyword check missed. Exactly one statement is sent: a `;` or a control character outside
string literals is refused, the connection has multi-statements switched off, and every pooled
connection is reset (COM_RESET_CONNECTION) before it goes back, so no session state (`SET`,
variables, locks) reaches the next execution; `USE` is refused. At most MYSQL_MAX_ROWS rows are
fetched (unbuffered). Values come back JSON-safe; the password never leaves this module.
"""

import asyncio
import hashlib
import json
import logging
import struct
from typing import Any

import aiomysql
import pymysql
from pydantic import AliasChoices, Field, SecretStr
from pymysql.constants import CLIENT, COMMAND

from errors import NodeConfigError, NodeExecutionError
from jsonutil import json_value
from tasks.context import RunContext
from tasks.cpu import run_cpu
from tasks.mysql_guard import check_statement
from tasks.redaction import redact
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import json_text, parse_port

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
DEFAULT_QUERY_TIMEOUT_S = 60.0
MAX_QUERY_TIMEOUT_S = 3600.0
KILL_TIMEOUT_S = 5.0
POOL_MAX_SIZE = 10
POOL_RECYCLE_S = 600
FETCH_CHUNK = 1000
COM_RESET_CONNECTION = 0x1F
MULTI_STATEMENTS_OFF = struct.pack("<H", 1)


class MysqlConfig(NodeConfig):
    host: str = Field(default="localhost", validation_alias=AliasChoices("mysqlHost"))
    port: str | int = Field(default="3306", validation_alias=AliasChoices("mysqlPort"))
    database: str | None = Field(default=None, validation_alias=AliasChoices("mysqlDatabase"))
    username: str | None = Field(default=None, validation_alias=AliasChoices("mysqlUsername"))
    password: SecretStr | None = Field(default=None, validation_alias=AliasChoices("mysqlPassword"))
    query: str | None = Field(default=None, validation_alias=AliasChoices("mysqlQuery"))
    params: Any = Field(default=None, validation_alias=AliasChoices("mysqlParams"))
    read_only: bool = Field(default=True, validation_alias=AliasChoices("mysqlReadOnly"))
    query_timeout: float | str | None = Field(
        default=None, validation_alias=AliasChoices("mysqlQueryTimeout")
    )


def _params(value: Any) -> list[Any] | dict[str, Any] | None:
    """`mysqlParams` as a list (`%s` placeholders) or an object (`%(name)s`); JSON text allowed."""
    if value is None or value == "" or value == [] or value == {}:
        return None
    value = json_text(value, "mysqlParams must be a JSON list or object")
    if isinstance(value, list | dict):
        return value or None
    raise NodeConfigError(
        "mysqlParams must be a list (for %s placeholders) or an object (for %(name)s placeholders)"
    )


def _query_timeout(value: float | str | None) -> float:
    if value is None or value == "":
        return DEFAULT_QUERY_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise NodeConfigError(
            f"mysqlQueryTimeout must be a number of seconds (got {value!r})"
        ) from None
    if not 0 < seconds <= MAX_QUERY_TIMEOUT_S:
        raise NodeConfigError(f"mysqlQueryTimeout must be > 0 and <= {MAX_QUERY_TIMEOUT_S:g} s")
    return seconds


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return f"{exc.args[1]} (error {exc.args[0]})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


async def _pool(ctx: RunContext, kwargs: dict[str, Any], password: str) -> Any:
    """The shared pool for this DSN (kept on `ctx.resources.mysql_pools`), created on first use.
    The key holds a hash of the password, never the password itself."""
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256(password.encode()).hexdigest()
    key = (id(loop), kwargs["host"], kwargs["port"], kwargs["user"], kwargs["db"], digest)
    pools = ctx.resources.mysql_pools
    pool = pools.get(key)
    if pool is not None and not pool.closed:
        return pool
    pool = await aiomysql.create_pool(
        minsize=1,
        maxsize=POOL_MAX_SIZE,
        pool_recycle=POOL_RECYCLE_S,
        password=password,
        connect_timeout=CONNECT_TIMEOUT_S,
        autocommit=True,
        charset="utf8mb4",
        **kwargs,
    )
    existing = pools.get(key)
    if existing is not None and not existing.closed:  # another node won the race
        pool.close()
        await pool.wait_closed()
        return existing
    pools[key] = pool
    logger.info(
        "mysql pool opened for %s@%s:%s/%s",
        kwargs["user"],
        kwargs["host"],
        kwargs["port"],
        kwargs["db"] or "",
        extra={"action": "mysql_pool"},
    )
    return pool


async def _kill(kwargs: dict[str, Any], password: str, thread_id: int) -> None:
    """Best effort: stop a timed-out statement on the server (its connection is dropped)."""
    try:
        async with asyncio.timeout(KILL_TIMEOUT_S):
            killer = await aiomysql.connect(
                password=password, connect_timeout=KILL_TIMEOUT_S, **kwargs
            )
            try:
                await killer.kill(thread_id)
            finally:
                killer.close()
    except (TimeoutError, OSError, pymysql.err.MySQLError) as exc:
        logger.warning(
            "could not kill timed-out MySQL thread %s: %s",
            thread_id,
            type(exc).__name__,
            extra={"action": "mysql_kill"},
        )


def _bind(cursor: Any, query: str, params: list[Any] | dict[str, Any] | None) -> str:
    """The query with `mysqlParams` escaped into its placeholders by the connection (PyMySQL's
    client-side binding); without parameters the query is sent as written."""
    if params is None:
        return query
    if isinstance(params, dict):
        values: Any = {k: _param(v) for k, v in params.items()}
    else:
        values = [_param(v) for v in params]
    try:
        return str(cursor.mogrify(query, values))
    except (TypeError, ValueError, KeyError) as exc:
        raise NodeConfigError(
            f"mysqlParams do not match the placeholders of mysqlQuery "
            f"({type(exc).__name__}: {exc}); use %s or %(name)s, and %% for "
            "a literal %"
        ) from None


def _param(value: Any) -> Any:
    """Objects and lists are not SQL values: they are sent as their JSON text."""
    return json.dumps(value) if isinstance(value, dict | list) else value


async def _single_statements(conn: Any) -> None:
    """Switch multi-statements off on the server side (aiomysql always asks for them at the
    handshake): COM_SET_OPTION MYSQL_OPTION_MULTI_STATEMENTS_OFF, once per connection."""
    if conn.client_flag & CLIENT.MULTI_STATEMENTS:
        await conn._execute_command(COMMAND.COM_SET_OPTION, MULTI_STATEMENTS_OFF)
        await conn._read_packet()
        conn.client_flag &= ~CLIENT.MULTI_STATEMENTS


async def _reset(conn: Any) -> None:
    """COM_RESET_CONNECTION: session variables, user variables, temporary tables, locks and
    transactions are dropped before the connection goes back to the pool."""
    await conn._execute_command(COM_RESET_CONNECTION, b"")
    await conn._read_ok_packet()


def _json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{str(k): json_value(v) for k, v in row.items()} for row in rows]


async def _fetch(cursor: Any, max_rows: int) -> list[dict[str, Any]]:
    """Rows of an unbuffered cursor in chunks; a node error once there are more than
    `max_rows` (the caller then drops the connection instead of reading the rest)."""
    rows: list[dict[str, Any]] = []
    while chunk := await cursor.fetchmany(FETCH_CHUNK):
        rows.extend(chunk)
        if len(rows) > max_rows:
            raise NodeExecutionError(
                f"MySQL query returned more than {max_rows:,} rows (MYSQL_MAX_ROWS); "
                "add a LIMIT or a narrower WHERE"
            )
    return rows


async def _run(
    conn: Any,
    query: str,
    params: list[Any] | dict[str, Any] | None,
    read_only: bool,
    max_rows: int,
) -> tuple[list[dict[str, Any]] | None, int, int | None]:
    """Execute on `conn`: (rows, or None when there is no result set; rowcount; lastrowid).
    The cursor is unbuffered and not closed on failure (closing would read every row)."""
    await _single_statements(conn)
    cursor = await conn.cursor(aiomysql.SSDictCursor)
    sql = _bind(cursor, query, params)
    if read_only:
        await cursor.execute("START TRANSACTION READ ONLY")
    await cursor.execute(sql)
    rows = await _fetch(cursor, max_rows) if cursor.description else None
    rowcount, last_id = cursor.rowcount, cursor.lastrowid
    await cursor.close()
    if read_only:
        await conn.query("ROLLBACK")
    return rows, rowcount, last_id


async def _query(
    ctx: RunContext, config: MysqlConfig, kwargs: dict[str, Any], password: str, timeout: float
) -> tuple[list[dict[str, Any]] | None, int, int | None]:
    """Acquire a pooled connection and run the statement under the query timeout; a connection
    that did not finish cleanly is closed instead of going back to the pool. The pool connects
    to the address the outbound policy checked (a mysqlHost is resolved once)."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            found = await ctx.resources.outbound.resolve(kwargs["host"], kwargs["port"])
            target = {**kwargs, "host": found[0][1]}
            pool = await _pool(ctx, target, password)
        async with asyncio.timeout(CONNECT_TIMEOUT_S + timeout):
            conn = await pool.acquire()
    except TimeoutError:
        raise NodeExecutionError(
            f"MySQL query failed: no connection to {kwargs['host']}:{kwargs['port']} in time "
            f"(connect timeout {CONNECT_TIMEOUT_S:g} s)",
            retryable=True,
        ) from None
    except (pymysql.err.MySQLError, OSError) as exc:
        raise _failure(exc, password, connecting=True, read_only=config.read_only) from None
    clean = False
    try:
        async with asyncio.timeout(timeout):
            result = await _run(
                conn,
                config.query or "",
                _params(config.params),
                config.read_only,
                ctx.settings.MYSQL_MAX_ROWS,
            )
            await _reset(conn)
        clean = True
        return result
    except TimeoutError:
        conn.close()
        await _kill(target, password, conn.thread_id())
        raise NodeExecutionError(
            f"MySQL query failed: no answer within {timeout:g} s (mysqlQueryTimeout)"
        ) from None
    except (pymysql.err.MySQLError, OSError) as exc:
        raise _failure(exc, password, connecting=False, read_only=config.read_only) from None
    finally:
        if not clean:
            conn.close()
        await pool.release(conn)


def _failure(
    exc: BaseException, password: str, *, connecting: bool, read_only: bool
) -> NodeExecutionError:
    """`MySQL query failed: …` without the password. Retried only when the server could not be
    reached, or when a read-only statement lost its connection (a write is never repeated)."""
    code = _error_code(exc)
    if connecting:
        retryable = code in {2003, 2013} or (code is None and isinstance(exc, OSError))
    else:
        retryable = read_only and code in {2006, 2013}
    return NodeExecutionError(
        f"MySQL query failed: {redact(_describe(exc), password)}", retryable=retryable
    )


@node("mysql", config=MysqlConfig, retries=1, timeout_s=None, network=True)
async def mysql(config: MysqlConfig, data: Any, ctx: RunContext) -> Envelope:
    """Rows as a list of objects (extra `rowCount`); a statement without a result set (only with
    mysqlReadOnly false) outputs [] with extras `affectedRows` and `insertId`."""
    if not config.query or not config.query.strip():
        raise NodeConfigError("No query configured for MySQL node (mysqlQuery)")
    check_statement(config.query, config.read_only)
    _params(config.params)
    timeout = _query_timeout(config.query_timeout)
    password = config.password.get_secret_value() if config.password else ""
    kwargs = {
        "host": config.host.strip(),
        "port": parse_port(config.port, "mysqlPort"),
        "user": config.username or None,
        "db": config.database or None,
    }
    rows, rowcount, last_id = await _query(ctx, config, kwargs, password, timeout)
    if rows is None:
        return envelope(
            f"MySQL statement affected {rowcount} rows",
            [],
            rowCount=rowcount,
            affectedRows=rowcount,
            insertId=last_id or None,
        )
    output = await run_cpu(_json_rows, rows, size=len(rows))  # off the loop when big
    return envelope(f"MySQL query returned {len(output)} rows", output, rowCount=len(output))
