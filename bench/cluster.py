"""Cluster and Prefect-cost rows (issue 11): W2 (10-node no-op) closed loop through the real
service on SQLite or PostgreSQL, with per-process CPU per execution, PostgreSQL's included.

    .venv/bin/python -m bench.cluster --stores postgres \\
        --rows "inline:WORKER_PROCESSES=1" --rows "inline:WORKER_PROCESSES=2" \\
        --count 3000 --repeat 2 --out bench/results/cluster.md

A row is a mode with settings, as in `bench.run --modes` (`prefect:PREFECT_TASK_NODES=network+
PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED=true`); every row runs on every store. Each run starts
the service like ./start.sh (`tests/service_process.py`: all-in-one, the embedded Prefect
server in prefect mode) on a fresh store (PostgreSQL: a throwaway database, dropped after),
submits 5 warm-up executions, then `--count` executions from `--concurrency` closed-loop
clients (the inline workflow in the body; completion read from the store every 10 ms, not
through the API under test). Reported per run: executions/s, e2e p50/p99, CPU ms per execution
of each service process (from /proc; several workers add up) and of the PostgreSQL backends
connected to the run's database (pg_stat_activity), the load average before and after, and the
mode the executions really ran in (`--idle S` instead: each process's CPU while the service
sits idle for S seconds). A row's `prefect_db=postgres` puts the embedded Prefect server
on a throwaway PostgreSQL database too (its backends count as postgres); `prefect_db=stack` runs
it as Prefect's production setup instead (tests/prefect_stack.py: one `--no-services` replica and
one services process on PostgreSQL + Redis, `stack.K=V` a Prefect setting of its processes;
Redis's CPU is not counted). `--profile DIR` adds
py-spy profiles of the service's processes (bench/profile.py) to the first repeat of each row.
"""

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.client import RawClient
from bench.procs import _stat, cpu_by_role, group_pids
from bench.profile import Profiler, render_summary
from bench.workflows import w2_noop
from tests.service_process import ROOT, ServiceProcess

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TERMINAL = ("completed", "failed", "cancelled")
STATUS_SQL = "SELECT id, status FROM workflow_executions WHERE status IN {} AND id IN ({})"


class Store:
    """A fresh store for one run and read access to its execution statuses."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind, self.workdir = kind, workdir
        self.url: str | None = None
        self.name = ""
        self.databases: list[str] = []
        self._pg: Any = None
        self._lite: sqlite3.Connection | None = None

    async def create(self, prefect_on_pg: bool) -> dict[str, str]:
        """Settings that point the service (and with `prefect_on_pg` its embedded Prefect
        server, else on SQLite in PREFECT_HOME) at the store."""
        if self.kind == "sqlite" and not prefect_on_pg:
            return {}
        import asyncpg

        self.name = f"wos_bench_{secrets.token_hex(4)}"
        names = [self.name] if self.kind == "postgres" else []
        names += [self.name + "_prefect"] if prefect_on_pg else []
        self.databases = names
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            for name in names:
                await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        base = PG_ADMIN.rsplit("/", 1)[0]
        env: dict[str, str] = {}
        if self.kind == "postgres":
            self.url = f"{base}/{self.name}"
            env["DATABASE_URL"] = self.url
        if prefect_on_pg:
            self.url = self.url or f"{base}/{self.name}_prefect"
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = (
                f"{base.replace('postgresql:', 'postgresql+asyncpg:')}/{self.name}_prefect"
            )
        return env

    async def open(self, service: ServiceProcess) -> None:
        if self.kind == "sqlite":
            self._lite = sqlite3.connect(f"file:{service.db}?mode=ro", uri=True, timeout=10)
        if self.url:
            import asyncpg

            self._pg = await asyncpg.connect(self.url)

    async def terminal(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        states = "(" + ",".join(f"'{s}'" for s in TERMINAL) + ")"
        if self._lite is not None:
            sql = STATUS_SQL.format(states, ",".join("?" * len(ids)))
            return dict(self._lite.execute(sql, ids).fetchall())
        sql = STATUS_SQL.format(states, ",".join(f"${i + 1}" for i in range(len(ids))))
        return {r["id"]: r["status"] for r in await self._pg.fetch(sql, *ids)}

    async def modes(self) -> dict[str, int]:
        sql = "SELECT COALESCE(mode, '-') AS m, COUNT(*) AS n FROM wos_executions GROUP BY 1"
        if self._lite is not None:
            return dict(self._lite.execute(sql).fetchall())
        return {r["m"]: r["n"] for r in await self._pg.fetch(sql)}

    async def backend_cpu(self) -> float:
        """CPU seconds of the PostgreSQL backends now connected to this run's database."""
        if self._pg is None:
            return 0.0
        rows = await self._pg.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])"
            " AND pid <> pg_backend_pid()",
            self.databases,
        )
        return sum(st[1] for r in rows if (st := _stat(r["pid"])) is not None)

    async def drop(self) -> None:
        if self._lite is not None:
            self._lite.close()
        if self._pg is not None:
            await self._pg.close()
        if self.databases:
            import asyncpg

            admin = await asyncpg.connect(PG_ADMIN)
            try:
                for name in self.databases:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_row(spec: str) -> tuple[dict[str, str], str]:
    """(settings, where the Prefect server runs: `prefect_db=sqlite` (embedded, the default),
    `postgres` (embedded on PostgreSQL) or `stack` (tests/prefect_stack.py))."""
    mode, _, settings = spec.partition(":")
    env = {"EXECUTION_MODE": mode}
    for item in filter(None, settings.split("+")):
        key, _, value = item.partition("=")
        env[key.strip()] = value.strip()
    return env, env.pop("prefect_db", "sqlite")


def stack_cpu(stack: Any) -> dict[str, float]:
    """CPU seconds of each process group of a PrefectStack (replicas, services)."""
    return {
        f"stack-{name}": sum(st[1] for pid in group_pids({p.pid}) if (st := _stat(pid)))
        for name, p in stack.procs.items()
        if name != "migrate"
    }


class Closed:
    """`concurrency` clients, each submitting the next execution when its last one ended."""

    def __init__(self, client: RawClient, store: Store, body: bytes) -> None:
        self.client, self.store, self.body = client, store, body
        self.pending: dict[str, tuple[float, asyncio.Future[str]]] = {}
        self.latencies: list[float] = []
        self.errors: list[str] = []

    async def poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            ids = list(self.pending)[:2000]
            for eid, status in (await self.store.terminal(ids)).items():
                started, fut = self.pending.pop(eid)
                self.latencies.append(time.monotonic() - started)
                if not fut.done():
                    fut.set_result(status)
            await asyncio.sleep(0.01)

    async def one(self) -> str:
        started = time.monotonic()
        status, data = await self.client.request("POST", "/api/workflows/execute", self.body)
        if status != 200:
            self.errors.append(f"HTTP {status}: {data[:200]!r}")
            return "error"
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[json.loads(data)["executionId"]] = (started, fut)
        return await asyncio.wait_for(fut, 300)

    async def run(self, count: int, concurrency: int) -> dict[str, int]:
        left = [count]
        statuses: dict[str, int] = {}

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                status = await self.one()
                statuses[status] = statuses.get(status, 0) + 1

        stop = asyncio.Event()
        poller = asyncio.create_task(self.poll(stop))
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            stop.set()
            await poller
        return statuses


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run_once(
    kind: str, spec: str, args: argparse.Namespace, profiler: Profiler | None
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="wos-bench-cluster-"))
    store = Store(kind, workdir)
    row_env, prefect_db = parse_row(spec)
    env = {**row_env, **await store.create(prefect_db == "postgres")}
    stack: Any = None
    if prefect_db == "stack":
        from tests.prefect_stack import PrefectStack

        stack_env = {k[6:]: row_env.pop(k) for k in list(row_env) if k.startswith("stack.")}
        env = {k: v for k, v in env.items() if not k.startswith("stack.")}
        stack = PrefectStack(workdir / "stack", replicas=1, **stack_env)
        await asyncio.to_thread(stack.start)
        store.databases.append(stack.database)
        env |= {"PREFECT_API_URL": stack.api_urls[0], "PREFECT_API_AUTH_STRING": stack.auth}
    service = ServiceProcess(workdir, LOG_LEVEL="WARNING", **env)
    try:
        await asyncio.to_thread(service.start, 240)
        await store.open(service)
        client = RawClient("127.0.0.1", service.port, max_conns=args.concurrency + 10)
        body = json.dumps(
            {"workflow": w2_noop(), "inputs": {}, "organizationId": "org_bench"}
        ).encode()
        warm = Closed(client, store, body)
        await warm.run(5, 1)
        await asyncio.sleep(args.settle)
        load0 = os.getloadavg()
        pgids = {service.pgid}
        if args.idle:
            return await idle_cpu(kind, spec, pgids, store, args.idle, load0)
        cpu0, pg0 = cpu_by_role(pgids), await store.backend_cpu()
        cpu0 |= stack_cpu(stack) if stack is not None else {}
        if profiler is not None:
            label = f"{kind}-{spec}".replace(":", "-").replace("+", "-").replace("=", "")
            profiler.start(argparse.Namespace(pgids=pgids, name="cluster"), label[:80])
        loop = Closed(client, store, body)
        t0 = time.monotonic()
        statuses = await loop.run(args.count, args.concurrency)
        wall = time.monotonic() - t0
        cpu1, pg1 = cpu_by_role(pgids), await store.backend_cpu()
        cpu1 |= stack_cpu(stack) if stack is not None else {}
        profile = profiler.stop() if profiler is not None else None
        done = max(1, sum(n for s, n in statuses.items() if s in TERMINAL))
        cpu = {k: round((cpu1.get(k, 0) - v) * 1000 / done, 2) for k, v in cpu0.items()}
        if store.databases:
            cpu["postgres"] = round((pg1 - pg0) * 1000 / done, 2)
        cpu["total"] = round(sum(cpu.values()), 2)
        result = {
            "store": kind,
            "row": spec,
            "count": args.count,
            "concurrency": args.concurrency,
            "statuses": statuses,
            "errors": loop.errors[:3],
            "wall_s": round(wall, 2),
            "exec_per_s": round(done / wall, 2),
            "e2e_ms": {
                "p50": round(pct(loop.latencies, 0.5) * 1000, 1),
                "p99": round(pct(loop.latencies, 0.99) * 1000, 1),
            },
            "cpu_ms_per_exec": cpu,
            "load_before": [round(x, 2) for x in load0],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "modes": await store.modes(),
        }
        if profile is not None:
            result["profile"] = profile
        await client.close()
        return result
    finally:
        await asyncio.to_thread(service.stop, 20)
        if stack is not None:
            store.databases.remove(stack.database)
            await asyncio.to_thread(stack.stop)
        await store.drop()
        if not args.keep:  # the service's log stays with --keep (or when stopping it failed)
            shutil.rmtree(workdir, ignore_errors=True)


async def idle_cpu(
    kind: str, spec: str, pgids: set[int], store: Store, seconds: float, load0: tuple[float, ...]
) -> dict[str, Any]:
    """CPU of each process (% of one core) while the service sits idle for `seconds`."""
    cpu0, pg0 = cpu_by_role(pgids), await store.backend_cpu()
    await asyncio.sleep(seconds)
    cpu1, pg1 = cpu_by_role(pgids), await store.backend_cpu()
    pct = {k: round((cpu1.get(k, 0) - v) * 100 / seconds, 2) for k, v in cpu0.items()}
    if store.databases:
        pct["postgres"] = round((pg1 - pg0) * 100 / seconds, 2)
    return {
        "store": kind,
        "row": spec,
        "idle_s": seconds,
        "idle_cpu_pct_of_core": pct,
        "load_before": [round(x, 2) for x in load0],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def render(results: list[dict[str, Any]]) -> str:
    if results and "idle_s" in results[0]:
        return "".join(
            f"- {r['store']} `{r['row']}`: idle {r['idle_s']} s, CPU % of a core "
            f"{r['idle_cpu_pct_of_core']}, load {r['load_before'][0]}\n"
            for r in results
        )
    roles = sorted({k for r in results for k in r["cpu_ms_per_exec"] if k != "total"})
    head = ["store", "row", "exec/s", "e2e p50/p99 ms", *roles, "total CPU ms", "load 1m", "modes"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results:
        cpu = r["cpu_ms_per_exec"]
        cells = [
            r["store"],
            f"`{r['row']}`",
            f"{r['exec_per_s']}",
            f"{r['e2e_ms']['p50']}/{r['e2e_ms']['p99']}",
            *[f"{cpu.get(k, '-')}" for k in roles],
            f"{cpu['total']}",
            f"{r['load_before'][0]} → {r['load_after'][0]}",
            ", ".join(f"{m} {n}" for m, n in r["modes"].items()),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    out = [
        "# W2 cluster rows (bench/cluster.py)",
        "",
        f"{results[0]['count'] if results else 0} executions per run at concurrency "
        f"{results[0]['concurrency'] if results else 0}; CPU in ms per execution "
        "(from /proc; postgres = the backends connected to the run's database).",
        "",
        *lines,
    ]
    for r in results:
        if r.get("errors"):
            out += ["", f"{r['store']} `{r['row']}` errors: {r['errors']}"]
        for name, summary in (r.get("profile") or {}).items():
            out += ["", render_summary(f"{r['store']} {r['row']} {name}", summary)]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--stores", default="postgres", help="sqlite,postgres")
    parser.add_argument("--rows", action="append", default=[], help="mode[:K=V+K=V]")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before timing")
    parser.add_argument(
        "--idle", type=float, default=0.0, help="measure idle CPU for this long instead of W2"
    )
    parser.add_argument("--keep", action="store_true", help="keep each run's temp directory")
    parser.add_argument("--profile", default=None, help="py-spy profiles into this directory")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cluster.md"))
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    rows = args.rows or ["inline:WORKER_PROCESSES=1"]
    for repeat in range(args.repeat):
        for kind in filter(None, args.stores.split(",")):
            for spec in rows:
                profiler = None
                if args.profile and repeat == 0:
                    profiler = Profiler(Path(args.profile))
                    if not profiler.available:
                        profiler = None
                result = await run_once(kind, spec, args, profiler)
                say(json.dumps({k: v for k, v in result.items() if k != "profile"}))
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(amain(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    say(f"wrote {args.out}")
    rates = [r["exec_per_s"] for r in results if "exec_per_s" in r]
    if rates:
        say(f"mean executions/s over {len(rates)} runs: {statistics.mean(rates):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
