"""The one-shot migration step of Prefect's production setup: the database migrations, then
Prefect's block types registered, before any API replica starts.

Run it once per rollout with the replicas' PREFECT_* environment (deploy/compose.yaml's
`prefect-migrate`, deploy/k8s/prefect-migrate-job.yaml): `python -m flows.prefect_migrate`. The
migrations are what `prefect server database upgrade -y` applies (Alembic to head). The block
types are what each replica would otherwise register on start: replicas started at the same
moment on a fresh database race on that (the loser exits 3 on `uq_block_type__slug`), so they run
with PREFECT_SERVER_REGISTER_BLOCKS_ON_START=false and this step registers them. Idempotent: on
an up-to-date database no migration runs and registered block types are updated in place.
"""

import argparse
import asyncio
import logging
from collections.abc import Sequence

logger = logging.getLogger("wos.prefect_migrate")


async def migrate() -> int:
    """Upgrade the Prefect database to head and register the block types; returns how many
    block types the database then holds."""
    from prefect.plugins import load_prefect_collections
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration
    from sqlalchemy import func, select

    db = provide_database_interface()
    engine = await db.engine()
    try:
        logger.info("Upgrading the Prefect database at %r", engine.url)
        await db.create_db()  # Alembic upgrade to head, as the CLI's `database upgrade`
        # the installed collections' block types too (prefect-redis'), as a replica's start does;
        # otherwise only a migration that happens to import them would register them
        load_prefect_collections()
        async with await db.session() as session:
            await run_block_auto_registration(session=session)
            count = await session.scalar(select(func.count()).select_from(db.BlockType))
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
