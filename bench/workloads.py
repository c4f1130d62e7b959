"""The workloads against an HTTP target (the service in one mode, or the naive baseline).

Every loop is bounded in count and in time; leftovers are cancelled before the next phase.
"""

import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Self

from bench import workflows as wf
from bench.client import summary_ms
from bench.procs import MemSampler, cpu_by_role
from bench.targets import Target
from tests.service_process import ROOT, venv_python

MB = 1024 * 1024


class Tracker:
    """Detects terminal executions in bulk: one query (or one bulk request) per tick for all
    in-flight ids, instead of one GET per execution."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.pending: dict[str, asyncio.Future[tuple[str, float]]] = {}
        self.task: asyncio.Task[None] | None = None
        self.polls = 0

    def start(self) -> Self:
        self.task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def watch(self, eid: str) -> asyncio.Future[tuple[str, float]]:
        fut = self.pending.get(eid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self.pending[eid] = fut
        return fut

    def forget(self, eid: str) -> None:
        self.pending.pop(eid, None)

    async def _loop(self) -> None:
        while True:
            ids = list(self.pending)
            if ids:
                try:
                    done = await self.target.terminal(ids)
                except Exception as exc:  # noqa: BLE001 - a busy database: try next tick
                    done = {}
                    sys.stderr.write(f"tracker: {type(exc).__name__}: {exc}\n")
                self.polls += 1
                now = time.perf_counter()
                for eid, status in done.items():
                    fut = self.pending.pop(eid, None)
                    if fut is not None and not fut.done():
                        fut.set_result((status, now))
            await asyncio.sleep(0.005 if len(ids) <= 64 else 0.01)


@dataclass
class Ctx:
    target: Target
    tracker: Tracker
    sampler: MemSampler
    upstream: int  # port of bench.mockserver
    params: dict[str, Any]
    profiler: Any = None

    def url(self, delay_ms: int) -> str:
        return f"http://127.0.0.1:{self.upstream}/delay/{delay_ms}"


async def submit_and_wait(ctx: Ctx, wid: str, timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        eid, error = await ctx.target.submit(wid)
    except Exception as exc:  # noqa: BLE001 - counted as a submit error
        eid, error = None, f"{type(exc).__name__}: {exc}"
    t_submit = time.perf_counter() - t0
    if eid is None:
        return {"status": "submit-error", "error": error, "submit": t_submit}
    try:
        status, t_done = await asyncio.wait_for(ctx.tracker.watch(eid), timeout)
    except TimeoutError:
        ctx.tracker.forget(eid)
        return {"status": "unfinished", "eid": eid, "submit": t_submit}
    return {"status": status, "eid": eid, "submit": t_submit, "e2e": t_done - t0}


async def settle(ctx: Ctx, leftovers: list[str], wait_s: float) -> int:
    """Wait up to `wait_s` for `leftovers` to finish, then cancel the rest; returns how many
    had to be cancelled."""
    futs = {eid: ctx.tracker.watch(eid) for eid in leftovers}
    if futs:
        await asyncio.wait(list(futs.values()), timeout=wait_s)
    rest = [eid for eid, fut in futs.items() if not fut.done()]
    for eid in rest:
        ctx.tracker.forget(eid)
    if rest:
        await ctx.target.cancel(rest)
        await asyncio.sleep(1.0)
    return len(rest)


# -- W1 ---------------------------------------------------------------------------------------


async def w1(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    out: dict[str, Any] = {}
    graphs = {"noop": wf.w1_noop(p["nodes"]), "http": wf.w1_http(ctx.url(10), p["nodes"])}
    for key, graph in graphs.items():
        wid = f"bench_w1_{key}"
        await ctx.target.register_workflow(wid, graph)
        warm = await submit_and_wait(ctx, wid, 120)  # first run: imports, connections, flows
        runs = []
        for _ in range(p["repeats"]):
            r = await submit_and_wait(ctx, wid, p["timeout_s"])
            if "eid" in r:
                ts = await ctx.target.timestamps(r["eid"])
                if ts.get("started") and ts.get("completed"):
                    r["phase"] = ts["completed"] - ts["started"]
                if r["status"] == "failed":
                    r["error"] = await ctx.target.error_of(r["eid"])
            runs.append(r)
        ok = [r for r in runs if r["status"] == "completed"]
        totals = [r["e2e"] for r in ok]
        phases = [r["phase"] for r in ok if "phase" in r]
        out[key] = {
            "nodes": p["nodes"],
            "runs": len(runs),
            "completed": len(ok),
            "statuses": [r["status"] for r in runs],
            "warmup_status": warm["status"],
            "errors": [r.get("error") for r in runs if r.get("error")][:2],
            "total_s": statistics.median(totals) if totals else None,
            "phase_s": statistics.median(phases) if phases else None,
        }
    return out


# -- W2 ---------------------------------------------------------------------------------------


async def closed_loop(
    ctx: Ctx, wid: str, total: int, concurrency: int, budget_s: float
) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    issued = 0
    deadline = time.perf_counter() + budget_s
    cpu0 = cpu_by_role(ctx.target.pgids)
    t0 = time.perf_counter()

    async def client() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            remaining = max(0.5, deadline - time.perf_counter())
            results.append(await submit_and_wait(ctx, wid, remaining + 10))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu1 = cpu_by_role(ctx.target.pgids)
    done = [r for r in results if r["status"] in ("completed", "failed", "cancelled")]
    completed = [r for r in done if r["status"] == "completed"]
    cancelled = await settle(ctx, [r["eid"] for r in results if r["status"] == "unfinished"], 5)
    return {
        "concurrency": concurrency,
        "issued": issued,
        "completed": len(completed),
        "failed": sum(1 for r in done if r["status"] == "failed"),
        "unfinished": cancelled,
        "submit_errors": sum(1 for r in results if r["status"] == "submit-error"),
        "submit_error_sample": [r.get("error") for r in results if r["status"] == "submit-error"][
            :3
        ],
        "elapsed": elapsed,
        "exec_s": len(completed) / elapsed if elapsed > 0 else 0.0,
        "submit_ms": summary_ms([r["submit"] for r in results if "submit" in r]),
        "e2e_ms": summary_ms([r["e2e"] for r in completed]),
        "cpu_ms_per_exec": {
            k: (cpu1.get(k, 0) - v) * 1000 / max(1, len(done)) for k, v in cpu0.items()
        },
    }


async def open_loop(ctx: Ctx, wid: str, rate: float, count: int, drain_s: float) -> dict[str, Any]:
    """Submit `count` executions at a fixed `rate`/s whatever the answers take (open loop)."""
    submits: list[float] = []
    errors: list[str] = []
    ids: list[str] = []

    async def one() -> None:
        s = time.perf_counter()
        try:
            eid, error = await ctx.target.submit(wid)
        except Exception as exc:  # noqa: BLE001 - counted
            eid, error = None, f"{type(exc).__name__}: {exc}"
        submits.append(time.perf_counter() - s)
        if eid is None:
            errors.append(error or "?")
        else:
            ids.append(eid)
            ctx.tracker.watch(eid)

    t0 = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    _, unanswered = await asyncio.wait(tasks, timeout=60)
    for task in unanswered:  # no answer within 60 s: a submit error (and no late ids below)
        task.cancel()
        errors.append("no answer within 60 s")
    offered_s = time.perf_counter() - t0
    futs = [ctx.tracker.watch(eid) for eid in ids]
    if futs:
        await asyncio.wait(futs, timeout=drain_s)
    done = [f.result() for f in futs if f.done()]
    drained = time.perf_counter() - t0
    cancelled = await settle(ctx, [e for e, f in zip(ids, futs, strict=True) if not f.done()], 0)
    completed = sum(1 for status, _ in done if status == "completed")
    last = max((t for _, t in done), default=t0)
    return {
        "rate": rate,
        "offered": count,
        "offered_s": offered_s,
        "achieved_rate": count / offered_s if offered_s > 0 else 0.0,
        "submit_ms": summary_ms(submits),
        "submit_errors": len(errors),
        "errors": errors[:3],
        "completed": completed,
        "unfinished": cancelled,
        "drain_s": drained,
        "exec_s": completed / (last - t0) if completed and last > t0 else 0.0,
    }


async def w2(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    wid = "bench_w2"
    await ctx.target.register_workflow(wid, wf.w2_noop())
    for _ in range(p["warmup"]):
        await submit_and_wait(ctx, wid, 120)
    out: dict[str, Any] = {}
    for c in p["concurrency"]:
        profiling = ctx.profiler is not None and c == max(p["concurrency"])
        if profiling:
            ctx.profiler.start(ctx.target, f"w2-c{c}")
        try:
            out[f"c{c}"] = await closed_loop(ctx, wid, p["counts"][str(c)], c, p["budget_s"])
        finally:
            if profiling:
                profile = ctx.profiler.stop()
                out.setdefault(f"c{c}", {"error": "interrupted"})["profile"] = profile
    out["open"] = await open_loop(ctx, wid, p["rate"], p["open_count"], p["drain_s"])
    return out


# -- W3 / W4 ----------------------------------------------------------------------------------


async def fan_out(ctx: Ctx, wid: str, n: int, budget_s: float, on_id: Any = None) -> dict[str, Any]:
    ctx.sampler.reset()
    ctx.sampler.sample()
    cpu0 = cpu_by_role(ctx.target.pgids)
    t0 = time.perf_counter()

    async def one() -> tuple[str | None, str | None]:
        try:
            eid, error = await ctx.target.submit(wid)
        except Exception as exc:  # noqa: BLE001 - counted as a submit error
            return None, f"{type(exc).__name__}: {exc}"
        if eid is not None:
            ctx.tracker.watch(eid)
            if on_id is not None:
                on_id(eid)
        return eid, error

    submitted = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    submit_s = time.perf_counter() - t0
    ids = [s[0] for s in submitted if isinstance(s, tuple) and s[0]]
    errors = [
        str(s[1] if isinstance(s, tuple) else s)
        for s in submitted
        if not (isinstance(s, tuple) and s[0])
    ]
    futs = [ctx.tracker.watch(eid) for eid in ids]
    if futs:
        await asyncio.wait(futs, timeout=max(1.0, budget_s - submit_s))
    done = [f.result() for f in futs if f.done()]
    last = max((t for _, t in done), default=time.perf_counter())
    ctx.sampler.sample()
    cpu1 = cpu_by_role(ctx.target.pgids)
    statuses: dict[str, int] = {}
    for status, _ in done:
        statuses[status] = statuses.get(status, 0) + 1
    unfinished = len(ids) - len(done)
    failed_ids = [
        eid for eid, f in zip(ids, futs, strict=True) if f.done() and f.result()[0] == "failed"
    ]
    sample_error = await ctx.target.error_of(failed_ids[0]) if failed_ids else None
    await settle(ctx, [eid for eid, f in zip(ids, futs, strict=True) if not f.done()], 0)
    return {
        "executions": n,
        "submitted": len(ids),
        "submit_errors": len(errors),
        "submit_error_sample": errors[:2],
        "submit_s": submit_s,
        "elapsed": (last - t0) if done else None,
        "statuses": statuses,
        "unfinished": unfinished,
        "complete": unfinished == 0 and not errors,
        "failed_sample": (sample_error or "")[:300] or None,
        "peak_mb": ctx.sampler.peak / MB,
        "peak_by_role_mb": {k: v / MB for k, v in ctx.sampler.peak_by_role.items()},
        "cpu_s": {k: cpu1.get(k, 0) - v for k, v in cpu0.items()},
    }


async def w3(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    wid = "bench_w3"
    await ctx.target.register_workflow(wid, wf.w3_fanout(ctx.url(p["delay_ms"]), p["nodes"]))
    await submit_and_wait(ctx, wid, 60)  # warm-up (connections to the upstream)
    out: dict[str, Any] = {"ideal_s": p["nodes"] * p["delay_ms"] / 1000}
    out["alone"] = await fan_out(ctx, wid, p["executions"], p["budget_s"])
    if p.get("with_w4", True):
        out["polled"] = await w3_with_w4(ctx, wid)
    return out


async def w3_with_w4(ctx: Ctx, wid: str) -> dict[str, Any]:
    """W3 again while a separate process polls GET /api/executions/{id} flat out (W4)."""
    p = ctx.params
    proc = await asyncio.create_subprocess_exec(
        venv_python(),
        "-m",
        "bench.poller",
        "--port",
        str(ctx.target.port),
        "--concurrency",
        str(p["pollers"]),
        "--max-seconds",
        str(p["budget_s"] + 30),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def feed(eid: str) -> None:
        proc.stdin.write(eid.encode() + b"\n")  # type: ignore[union-attr]

    try:
        result = await fan_out(ctx, wid, p["executions"], p["budget_s"], on_id=feed)
        # keep polling for a moment after the last completion only if the run was very short
        proc.stdin.write(b"STOP\n")
        await proc.stdin.drain()
        raw, _ = await asyncio.wait_for(proc.communicate(), 60)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    line = next((ln for ln in raw.decode().splitlines() if ln.startswith("RESULT ")), None)
    result["poll"] = json.loads(line[7:]) if line else {"error": "poller gave no result"}
    return result


# -- W5 ---------------------------------------------------------------------------------------


async def w5(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    wid = "bench_w5"
    t_reg = time.perf_counter()
    await ctx.target.register_workflow(wid, p["workflow"])
    register_s = time.perf_counter() - t_reg
    ctx.sampler.reset()
    ctx.sampler.sample()
    r = await submit_and_wait(ctx, wid, p["timeout_s"])
    ctx.sampler.sample()
    out: dict[str, Any] = {
        "rows": p["rows"],
        "source": p["source"],
        "status": r["status"],
        "elapsed": r.get("e2e"),
        "submit_s": r.get("submit"),
        "register_s": register_s,
        "timeout_s": p["timeout_s"],
        "peak_mb": ctx.sampler.peak / MB,
        "peak_by_role_mb": {k: v / MB for k, v in ctx.sampler.peak_by_role.items()},
    }
    if r["status"] == "failed" and "eid" in r:
        out["error"] = (await ctx.target.error_of(r["eid"]) or "")[:300]
    if r["status"] == "submit-error":
        out["error"] = r.get("error")
    if r["status"] == "unfinished":
        await settle(ctx, [r["eid"]], 0)
    return out


GROUPS = {"W1": w1, "W2": w2, "W3": w3, "W5": w5}
