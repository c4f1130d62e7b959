"""The migration step (flows/prefect_migrate.py) run as deploy/k8s runs it: an init container of
every Prefect pod, so several copies can start at the same moment on a fresh database. On
PostgreSQL they take turns on an advisory lock: one applies the migrations, the others find the
database at head, and all of them register the block types, one after the other."""

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from flows.prefect_migrate import LOCK_KEY, LOCK_POLL_SECONDS, migration_lock
from tests.prefect_stack import MIGRATE
from tests.service_process import ROOT, scrubbed_env, stop_group
from tests.support import postgres_database, postgres_database_sync, postgres_query

COPIES = 3
"""Copies started together: one per Prefect pod of deploy/k8s (2 API replicas, 1 services)."""
PROTECTED_BLOCK_TYPES = {"secret", "webhook", "local-file-system"}
"""Block types Prefect's server expects to exist (`_install_protected_system_blocks`)."""
MIGRATED = re.compile(r"Prefect database migrated; (\d+) block types registered")
UPGRADED = "Running upgrade"
"""What Alembic logs for each migration it applies."""
WAITED = "Waiting for another migration step"


def asyncpg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    async for url in postgres_database():
        yield url


@pytest.mark.postgres
async def test_the_lock_waits_for_its_holder_and_is_released_when_the_body_fails(
    database_url: str,
) -> None:
    """`migration_lock` polls the advisory lock `LOCK_KEY` while another session holds it, enters
    once that session lets go, and gives the lock back when its body raises (not only when its
    process ends: the engine still holds the connection afterwards)."""
    holder = await asyncpg.connect(database_url)
    engine = create_async_engine(asyncpg_url(database_url))
    entered = asyncio.Event()
    held_inside: list[bool] = []

    async def migrate() -> None:
        async with migration_lock(engine):
            entered.set()
            held_inside.append(
                not await holder.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
            )
            raise RuntimeError("the migration failed")

    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        task = asyncio.create_task(migrate())
        await asyncio.sleep(4 * LOCK_POLL_SECONDS)
        assert not entered.is_set(), "entered while another session held the lock"
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        with pytest.raises(RuntimeError, match="the migration failed"):
            await asyncio.wait_for(task, 10)
        assert held_inside == [True]
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
    finally:
        await holder.close()
        await engine.dispose()


async def test_sqlite_takes_no_lock(tmp_path: Path) -> None:
    """One machine's database: the body runs at once (PostgreSQL's lock functions do not exist
    there)."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}")
    entered = False
    try:
        async with migration_lock(engine):
            entered = True
    finally:
        await engine.dispose()
    assert entered


@pytest.mark.slow
@pytest.mark.postgres
def test_copies_started_together_on_a_fresh_database_run_one_after_the_other(
    tmp_path: Path,
) -> None:
    """`COPIES` copies of `python -m flows.prefect_migrate` started at the same moment on a fresh
    PostgreSQL database all exit 0: exactly one applied the migrations (the others waited for
    its lock and found the database at head), and each registered the same block types, updated
    in place by the later ones."""
    with postgres_database_sync() as url:
        logs = [tmp_path / f"migrate-{i + 1}.log" for i in range(COPIES)]
        procs = []
        for i, log in enumerate(logs):
            env = scrubbed_env(
                PREFECT_HOME=str(tmp_path / f"home-{i + 1}"),
                PREFECT_API_DATABASE_CONNECTION_URL=asyncpg_url(url),
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
            )
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        MIGRATE,
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        try:
            codes = [proc.wait(300) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    stop_group(proc)
        texts = [log.read_text(errors="replace") for log in logs]
        assert codes == [0] * COPIES, "\n\n".join(texts)
        slugs = [r["slug"] for r in asyncio.run(postgres_query(url, "SELECT slug FROM block_type"))]
        versions = asyncio.run(postgres_query(url, "SELECT version_num FROM alembic_version"))

    assert PROTECTED_BLOCK_TYPES <= set(slugs), slugs
    assert [MIGRATED.findall(text) for text in texts] == [[str(len(slugs))]] * COPIES
    assert len(versions) == 1
    upgraded = [i + 1 for i, text in enumerate(texts) if UPGRADED in text]
    assert len(upgraded) == 1, f"copies {upgraded} applied migrations"
    assert any(WAITED in text for text in texts), "the copies did not overlap: nothing tested"
