"""The one-shot migration step of Prefect's production setup: the database migrations, then
Prefect's block types registered, before any API replica starts.

Run it with the replicas' PREFECT_* environment before they start (deploy/compose.yaml's
`prefect-migrate`, the init container `prefect-migrate` of deploy/k8s' Prefect Deployments):
`python -m flows.prefect_migrate`. The migrations are what `prefect server database upgrade -y`
applies (Alembic to head). The block types are what each replica would otherwise register on
start: replicas started at the same moment on a fresh database race on that (the loser exits 3 on
`uq_block_type__slug`), so they run with PREFECT_SERVER_REGISTER_BLOCKS_ON_START=false and this
step registers them. Idempotent: on an up-to-date database no migration runs and registered block
types are updated in place.

Safe to run concurrently (every Kubernetes pod runs it before its Prefect process): on PostgreSQL
each copy holds the advisory lock `LOCK_KEY` around both parts, so copies started together run one
after the other, and each later one finds the database at head. SQLite is one machine's database
and takes no lock.
"""

import argparse
import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger("wos.prefect_migrate")

LOCK_NAME = "wos-prefect-migrate"
LOCK_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)
"""The PostgreSQL advisory lock (a bigint key) the step holds: the first 8 bytes of
sha256(LOCK_NAME), signed big-endian: -7583917945180950184. See it held in `pg_locks`
(locktype 'advisory', classid/objid its high/low 32 bits)."""
LOCK_POLL_SECONDS = 0.5


@asynccontextmanager
async def migration_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """On PostgreSQL, hold the session-level advisory lock `LOCK_KEY` on a connection of its own
    (not the migrations') while the body runs; released in `finally`, and by PostgreSQL if the
    process dies. Polled with `pg_try_advisory_lock` rather than waited for in
    `pg_advisory_lock`: Prefect's engine gives every statement asyncpg's `command_timeout`
    (PREFECT_SERVER_DATABASE_TIMEOUT, 10 s), less than another copy's migration of a fresh
    database takes. Autocommit, so the connection never sits idle in a transaction (which a
    server's `idle_in_transaction_session_timeout` would end, and the lock with it)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        try_lock = sa.text("SELECT pg_try_advisory_lock(:key)").bindparams(key=LOCK_KEY)
        if not await conn.scalar(try_lock):
            logger.info("Waiting for another migration step (advisory lock %d)", LOCK_KEY)
            while not await conn.scalar(try_lock):
                await asyncio.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            await conn.execute(sa.text("SELECT pg_advisory_unlock(:key)").bindparams(key=LOCK_KEY))


async def migrate() -> int:
    """Upgrade the Prefect database to head and register the block types, under
    `migration_lock`; returns how many block types the database then holds."""
    from prefect.plugins import load_prefect_collections
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    db = provide_database_interface()
    engine = await db.engine()
    try:
        async with migration_lock(engine):
            logger.info("Upgrading the Prefect database at %r", engine.url)
            await db.create_db()  # Alembic upgrade to head, as the CLI's `database upgrade`
            # the installed collections' block types too (prefect-redis'), as a replica's start
            # does; otherwise only a migration that happens to import them would register them
            load_prefect_collections()
            async with await db.session() as session:
                await run_block_auto_registration(session=session)
                count = await session.scalar(sa.select(sa.func.count()).select_from(db.BlockType))
    finally:
        await engine.dispose()
    return count or 0


def main(argv: Sequence[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m flows.prefect_migrate",
        description="Migrate the Prefect database and register its block types, once before "
        "the API replicas start (PREFECT_* settings from the environment).",
    ).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    for name in (logger.name, "alembic.runtime.migration"):  # ours and "Running upgrade ..."
        logging.getLogger(name).setLevel(logging.INFO)
    count = asyncio.run(migrate())
    logger.info("Prefect database migrated; %d block types registered", count)


if __name__ == "__main__":
    main()
