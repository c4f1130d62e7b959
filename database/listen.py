"""PostgreSQL LISTEN/NOTIFY, shared by the API's event hub (`wos_events`) and the workers'
wake-up (`wos_queue`): the plain DSN to listen on, the NOTIFY a submit's transaction sends, and
one reconnecting listener loop. asyncpg is imported only when a loop runs (SQLite users never
import it)."""

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

logger = logging.getLogger(__name__)

QUEUE_CHANNEL = "wos_queue"
"""Notified in the transaction that queues an execution; workers of every machine LISTEN."""
NOTIFY_QUEUE = sa.text(f"SELECT pg_notify('{QUEUE_CHANNEL}', '')")
"""Delivered at commit; PostgreSQL folds identical notifications of one transaction into one."""
RECONNECT_S = 1.0


def listen_dsn(database_url: str) -> str | None:
    """The plain `postgresql://` DSN to LISTEN on, for a PostgreSQL store; None (poll) for any
    other."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme.partition("+")[0].lower() not in ("postgresql", "postgres"):
        return None
    return f"postgresql://{rest}"


async def listen_forever(
    dsn: str, channel: str, on_notify: Callable[[], None], *, name: str = "listener"
) -> None:
    """LISTEN on `channel` over a connection of its own until cancelled, reconnecting when the
    connection is lost. `on_notify` runs for each notification and after each (re)connection,
    which may have missed some, so the caller's safety poll only covers a lost connection."""
    import asyncpg  # type: ignore[import-untyped]

    def notified(*_args: Any) -> None:
        on_notify()

    while True:
        lost = asyncio.get_running_loop().create_future()
        conn: Any = None
        try:
            conn = await asyncpg.connect(dsn)
            conn.add_termination_listener(functools.partial(_resolve, lost))
            await conn.add_listener(channel, notified)
            on_notify()
            await lost
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            logger.warning(
                "%s connection failed: %s", name, exc, extra={"action": f"listen_{channel}"}
            )
        finally:
            if conn is not None and not conn.is_closed():
                await conn.close()
        await asyncio.sleep(RECONNECT_S)


def _resolve(future: "asyncio.Future[None]", *_args: Any) -> None:
    if not future.done():
        future.set_result(None)
