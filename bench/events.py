"""Event stream benchmark (issue 10): latency from a node's checkpoint commit to the event's
arrival at an SSE client, on SQLite and PostgreSQL; and 1,000 concurrent subscribers on one API
process: every event delivered to each, in order, none lost, and the API's CPU while they idle.

    .venv/bin/python -m bench.events [--quick] [--backends sqlite,postgres]
                                     [--subscribers 1000] [--out bench/results/events.md]

The real service runs as `./start.sh` starts it (tests/service_process.py, inline mode, one
worker). Latency = arrival time at the client − the event's `timestamp` (taken by the worker
just before the transaction that commits the checkpoint, so it includes the commit itself);
both clocks are this machine's. Subscribers are raw asyncio sockets (one HTTP/1.1 request
each, the body read as it comes), so the client's own cost stays small.
"""

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.procs import cpu_by_role
from tests.service_process import ServiceProcess
from tests.support import postgres_database_sync, postgres_query

CHAIN_NODES = 10


def log(msg: str) -> None:
    sys.stderr.write(f"[bench.events {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def chain() -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": "t", "type": "trigger"}]
    for i in range(CHAIN_NODES - 1):
        config = {"addFieldName": f"f{i}", "addFieldValue": i}
        nodes.append({"id": f"a{i}", "type": "addField", "config": config})
    ids = [n["id"] for n in nodes]
    links = [{"fromNodeId": a, "toNodeId": b} for a, b in zip(ids, ids[1:], strict=False)]
    return {"nodes": nodes, "connections": links}


class Subscriber:
    """One SSE connection to /api/events: ids and arrival times of the events it got."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.latency_ms: list[float] = []
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: bench\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the answer starts once subscribed
        self.ready.set()
        event: dict[str, str] = {}
        try:
            while line := await reader.readline():
                text = line.decode().rstrip("\r\n")
                if text.startswith(("id: ", "event: ", "data: ")):
                    name, _, value = text.partition(": ")
                    event[name] = value
                elif not text and "data" in event:
                    self._got(event)
                    event = {}
        finally:
            writer.close()

    def _got(self, event: dict[str, str]) -> None:
        now = time.time()
        body = json.loads(event["data"])
        self.ids.append(int(event["id"]))
        if body["type"] == "node.completed":
            stamp = dt.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
            self.latency_ms.append((now - stamp.timestamp()) * 1000)


async def subscribe(port: int, count: int) -> list[Subscriber]:
    subs = [Subscriber() for _ in range(count)]
    for i in range(0, count, 100):  # connect in waves: the listen backlog is finite
        for sub in subs[i : i + 100]:
            sub.task = asyncio.create_task(sub.run(port))
        await asyncio.gather(*(s.ready.wait() for s in subs[i : i + 100]))
    return subs


async def submit(client: httpx.AsyncClient, count: int, pause_s: float) -> list[str]:
    ids = []
    for _ in range(count):
        r = await client.post("/api/workflows/execute", json={"workflowId": "chain", "inputs": {}})
        r.raise_for_status()
        ids.append(r.json()["executionId"])
        await asyncio.sleep(pause_s)
    return ids


async def wait_events(subs: list[Subscriber], expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(len(s.ids) < expected for s in subs):
        await asyncio.sleep(0.1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(svc: ServiceProcess, args: argparse.Namespace) -> dict[str, Any]:
    """Latency with one subscriber, then the fan-out to `args.subscribers`."""
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=svc.url, timeout=30, trust_env=False) as client:
        (one,) = await subscribe(svc.port, 1)
        ids = await submit(client, args.executions, 0.05)
        per_execution = 3 + 2 * CHAIN_NODES  # queued, started, completed + each node's two
        await wait_events([one], len(ids) * per_execution, 60)
        lat = one.latency_ms
        out["latency"] = {
            "events": len(lat),
            "p50_ms": round(statistics.median(lat), 1),
            "p95_ms": round(pct(lat, 0.95), 1),
            "max_ms": round(max(lat), 1),
        }
        log(f"latency: {out['latency']}")
        assert one.task is not None
        one.task.cancel()

        subs = await subscribe(svc.port, args.subscribers)
        log(f"{len(subs)} subscribers connected; idle for {args.idle_s} s")
        await asyncio.sleep(2)
        before, t0 = cpu_by_role({svc.pgid}), time.monotonic()
        await asyncio.sleep(args.idle_s)
        after, t1 = cpu_by_role({svc.pgid}), time.monotonic()
        idle = {k: round(100 * (after[k] - before.get(k, 0.0)) / (t1 - t0), 2) for k in after}
        out["idle_cpu_percent"] = idle
        log(f"idle CPU % of a core: {idle}")
        start_cpu, start = cpu_by_role({svc.pgid}), time.monotonic()
        fan_ids = await submit(client, args.fanout_executions, 0.1)
        expected = len(fan_ids) * per_execution
        await wait_events(subs, expected, 120)
        busy = cpu_by_role({svc.pgid})
        reference = subs[0].ids
        in_order = all(s.ids == sorted(set(s.ids)) for s in subs)
        complete = all(len(s.ids) == expected for s in subs)
        identical = all(s.ids == reference for s in subs)
        lat_all = [x for s in subs for x in s.latency_ms]
        out["fanout"] = {
            "subscribers": len(subs),
            "executions": len(fan_ids),
            "events_each": expected,
            "all_received": complete,
            "in_order": in_order,
            "identical_streams": identical,
            "min_received": min(len(s.ids) for s in subs),
            "latency_p50_ms": round(statistics.median(lat_all), 1) if lat_all else None,
            "latency_p95_ms": round(pct(lat_all, 0.95), 1) if lat_all else None,
            "api_cpu_s": round(busy.get("api", 0.0) - start_cpu.get("api", 0.0), 2),
            "wall_s": round(time.monotonic() - start, 1),
        }
        log(f"fan-out: {out['fanout']}")
        for sub in subs:
            assert sub.task is not None
            sub.task.cancel()
        await asyncio.gather(*(s.task for s in subs if s.task), return_exceptions=True)
    return out


@contextlib.contextmanager
def service(backend: str, workdir: Path) -> Iterator[ServiceProcess]:
    with postgres_database_sync() if backend == "postgres" else contextlib.nullcontext() as url:
        settings = {"EXECUTION_MODE": "inline", "LOG_LEVEL": "WARNING"}
        if url is not None:
            settings["DATABASE_URL"] = url
        svc = ServiceProcess(workdir, **settings).start(timeout=180)
        try:
            svc_sql_workflow(svc, url)
            yield svc
        finally:
            svc.stop()


def svc_sql_workflow(svc: ServiceProcess, url: str | None) -> None:
    """Store the chain workflow as the Node backend would."""
    row = ("chain", "Chain", json.dumps(chain()))
    if url is not None:
        query = "INSERT INTO workflows (id, name, data) VALUES ($1, $2, $3)"
        asyncio.run(postgres_query(url, query, *row))
        return
    with contextlib.closing(sqlite3.connect(svc.db)) as conn:
        conn.execute("INSERT INTO workflows (id, name, data) VALUES (?, ?, ?)", row)
        conn.commit()


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Event stream benchmark",
        "",
        f"`python -m bench.events {' '.join(sys.argv[1:])}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (a shared machine: figures are noisy).",
        "",
        f"Workflow: trigger + {CHAIN_NODES - 1} addField nodes, inline mode, one worker process. "
        "Latency: a node.completed event's arrival at an SSE client minus its `timestamp` "
        "(taken before the checkpoint's transaction, so the commit is included).",
        "",
        "| backend | latency p50 | p95 | target p50 | subscribers | events each | all received, "
        "in order | API CPU idle (% of a core) | target idle |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    targets = {"sqlite": 150, "postgres": 50}
    for backend, r in results.items():
        lat, fan = r["latency"], r["fanout"]
        ok = fan["all_received"] and fan["in_order"] and fan["identical_streams"]
        idle = r["idle_cpu_percent"].get("api", float("nan"))
        lines.append(
            f"| {backend} | {lat['p50_ms']} ms | {lat['p95_ms']} ms | ≤ {targets[backend]} ms "
            f"({'met' if lat['p50_ms'] <= targets[backend] else '**not met**'}) | "
            f"{fan['subscribers']} | {fan['events_each']} | {'yes' if ok else '**no**'} "
            f"(min {fan['min_received']}) | {idle} | < 10 "
            f"({'met' if idle < 10 else '**not met**'}) |"
        )
    lines += ["", "Raw figures:", "", "```json", json.dumps(results, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--subscribers", type=int, default=None)
    parser.add_argument("--out", default="bench/results/events.md")
    args = parser.parse_args()
    args.executions = 3 if args.quick else 40
    args.fanout_executions = 2 if args.quick else 10
    args.idle_s = 2.0 if args.quick else 20.0
    if args.subscribers is None:
        args.subscribers = 20 if args.quick else 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.subscribers)), hard))
    results = {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp, service(backend, Path(tmp)) as svc:
            log(f"{backend}: service up at {svc.url}")
            results[backend] = asyncio.run(measure(svc, args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(results, args))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
