"""Claim cost with a deep queue (issue 11): 100,000 queued executions over 50 organizations and
the three priorities (a third of them aged), then the time of a worker's claim and of a submit
(its turn is read from the queue), on SQLite and PostgreSQL.

    .venv/bin/python -m bench.claims [--rows 100000] [--backends sqlite,postgres]
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from database import NewExecution, open_store
from database.claim_order import ClaimPolicy
from database.schema import executions, runs
from database.sql import SqlStore
from jsonutil import now_iso
from states import RunState
from tests.support import store_url

ORGS = 50
CHUNK = 5_000


def log(msg: str) -> None:
    print(msg, flush=True)  # noqa: T201 - a benchmark's report


async def fill(store: SqlStore, rows: int) -> None:
    """Queued rows written directly (turns as submits would give them: one per org and level)."""
    now_ns, now = time.time_ns(), now_iso()
    for start in range(0, rows, CHUNK):
        execs, queued = [], []
        for i in range(start, min(rows, start + CHUNK)):
            eid = f"q{i:07d}"
            org = f"org{i % ORGS}"
            aged = i % 3 == 0
            execs.append(
                {"id": eid, "workflowId": "wf", "organizationId": org, "status": "pending"}
                | {"createdAt": now}
            )
            queued.append(
                {
                    "executionId": eid,
                    "seq": now_ns - (10**12 if aged else 0) + i,
                    "definition": '{"nodes": []}',
                    "requestedMode": "inline",
                    "state": RunState.QUEUED.value,
                    "createdAt": now,
                    "priority": i % 3,
                    "orgGroup": org,
                    "turn": i // (ORGS * 3),
                }
            )
        async with store.write() as conn:
            await conn.execute(executions.insert(), execs)
            await conn.execute(runs.insert(), queued)


async def measure(kind: str, rows: int, tmp: Path) -> None:
    async with store_url(kind, tmp) as url:
        store = await open_store(url)
        assert isinstance(store, SqlStore)
        try:
            started = time.monotonic()
            await fill(store, rows)
            log(f"{kind}: {rows} queued rows written in {time.monotonic() - started:.1f} s")
            if kind == "postgres":  # what autovacuum does within a minute of such a load
                async with store.write() as conn:
                    await conn.exec_driver_sql("ANALYZE wos_executions")
            for policy in (ClaimPolicy(), ClaimPolicy(max_per_org=5)):
                times = []
                for _ in range(30):
                    t = time.perf_counter()
                    got = await store.claim("bench", 10, 60, policy)
                    times.append((time.perf_counter() - t) * 1000)
                    assert got
                    for claim in got:  # keeps the running count (and the cap) steady
                        await store.mark_done(claim.execution_id)
                log(
                    f"{kind}: claim of 10 (cap {policy.max_per_org}): median "
                    f"{statistics.median(times):.2f} ms, max {max(times):.2f} ms"
                )
            times = []
            for i in range(30):
                new = NewExecution(
                    f"s{i}", "wf", "WF", f"org{i % ORGS}", {}, '{"nodes": []}', "inline"
                )
                t = time.perf_counter()
                await store.create_execution(new)
                times.append((time.perf_counter() - t) * 1000)
            log(f"{kind}: submit: median {statistics.median(times):.2f} ms, max {max(times):.2f}")
        finally:
            await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    for kind in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            await measure(kind, args.rows, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
