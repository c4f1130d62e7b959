"""The benchmark suite: one command runs every workload against every execution mode of the
real service and the baselines, and writes a markdown table per workload.

    .venv/bin/python -m bench.run [--quick] [--workloads W1,W2,W3,W4,W5]
                                  [--modes inline,prefect] [--baselines plain,durable,naive]
                                  [--out bench/results/results.md] [--json PATH] [--profile DIR]
    ./bench.sh [same options]      (creates/updates .venv like ./test.sh, then runs the above)

--quick: tiny sizes (a smoke run that cannot rot; its numbers mean nothing).
--profile DIR: attach py-spy to the API, worker(s) and Prefect server during W2 at
concurrency 50 and summarise where their CPU time goes (needs `py-spy`, requirements-dev.txt).
"""

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench import workflows as wf
from bench.procs import MemSampler
from bench.targets import NaiveTarget, ServiceTarget, Target
from bench.workloads import GROUPS, Ctx, Tracker
from tests.service_process import ROOT, scrubbed_env, venv_python

MB = 1024 * 1024

FULL: dict[str, dict[str, Any]] = {
    "W1": {"nodes": 40, "repeats": 5, "timeout_s": 120},
    "W2": {
        "warmup": 5,
        "concurrency": [1, 50],
        "counts": {"1": 200, "50": 1000},
        "budget_s": 60,
        "rate": 200.0,
        "open_count": 1000,
        "drain_s": 60,
    },
    "W3": {"executions": 500, "nodes": 5, "delay_ms": 100, "budget_s": 180, "pollers": 50},
    "W5": {"rows": 100_000, "timeout_s": 60, "ladder": [1000, 2000, 4000]},
}
QUICK: dict[str, dict[str, Any]] = {
    "W1": {"nodes": 40, "repeats": 1, "timeout_s": 60},
    "W2": {
        "warmup": 1,
        "concurrency": [1, 50],
        "counts": {"1": 3, "50": 3},
        "budget_s": 30,
        "rate": 200.0,
        "open_count": 3,
        "drain_s": 30,
    },
    "W3": {"executions": 3, "nodes": 5, "delay_ms": 100, "budget_s": 60, "pollers": 4},
    "W5": {"rows": 200, "timeout_s": 60, "ladder": [100, 200]},
}
# in-process baselines are 10-1000× faster: bigger counts for a stable figure
BASELINE_W2_COUNTS = {"full": {"1": 2000, "50": 10000}, "quick": {"1": 3, "50": 3}}
BASELINE_W1_REPEATS = {"full": 20, "quick": 1}
GROUP_TIMEOUT_S = {"W1": 900, "W2": 900, "W3": 900}


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# -- machine ----------------------------------------------------------------------------------


def machine(service_root: str | None = None) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = int(line.split()[1]) / 1024 / 1024
    git = "?"
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            text=True,
            capture_output=True,
        ).stdout.strip()
        git = f"commit {head}" + (
            " + uncommitted changes to " + ", ".join(sorted({ln[3:] for ln in dirty.splitlines()}))
            if dirty
            else ""
        )
    if service_root:
        git += f"; service rows run from {service_root}"
    prefect_version = "?"
    with contextlib.suppress(Exception):
        import prefect

        prefect_version = prefect.__version__
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": ram,
        "python": platform.python_version(),
        "prefect": prefect_version,
        "sqlite": sqlite3.sqlite_version,
        "git": git,
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# -- upstream ---------------------------------------------------------------------------------


class Upstream:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [venv_python(), "-m", "bench.mockserver"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = re.match(r"READY (\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"mock upstream did not start: {line!r}")
        self.port = int(match.group(1))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


# -- W5 inputs --------------------------------------------------------------------------------


def w5_workflow(rows: int, upload_dir: Path) -> tuple[dict[str, Any], str]:
    """The W5 graph reading two CSV files written under `upload_dir` (the service's UPLOAD_DIR)."""
    upload_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    for side in ("A", "B"):
        data = wf.w5_rows(rows, side)
        name = f"w5_{side.lower()}.csv"
        with (upload_dir / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
        sources.append({"fileName": name, "filePath": name})
    return wf.w5_bigdata(rows, sources[0], sources[1]), "CSV files (filePath under UPLOAD_DIR)"


# -- baselines --------------------------------------------------------------------------------


async def run_baseline(
    kind: str, spec: dict[str, Any], timeout: float, env: dict[str, str]
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"kind": kind, **spec}, fh)
        path = fh.name
    proc = await asyncio.create_subprocess_exec(
        venv_python(),
        "-m",
        "bench.baselines",
        path,
        cwd=ROOT,
        env=scrubbed_env(LOG_LEVEL="WARNING", **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return {"status": "timeout", "timeout_s": timeout}
    finally:
        os.unlink(path)
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": f"exit {proc.returncode}: {err.decode()[-400:]}"}
    result: dict[str, Any] = json.loads(line[7:])
    return result


async def baselines(
    kinds: list[str],
    workloads: list[str],
    p: dict[str, dict[str, Any]],
    quick: bool,
    upstream: int,
    w5: tuple[dict[str, Any], str, Path] | None,
    results: dict[str, Any],
) -> None:
    size = "quick" if quick else "full"
    url = f"http://127.0.0.1:{upstream}/delay/"
    for kind in kinds:
        env = {"UPLOAD_DIR": str(w5[2])} if w5 else {}
        if "W1" in workloads:
            log(f"baseline {kind}: W1")
            results["W1"][kind] = await run_baseline(
                kind,
                {
                    "workload": "W1",
                    "workflows": {
                        "noop": wf.w1_noop(p["W1"]["nodes"]),
                        "http": wf.w1_http(url + "10", p["W1"]["nodes"]),
                    },
                    "params": {"repeats": BASELINE_W1_REPEATS[size]},
                },
                600,
                env,
            )
        if "W2" in workloads:
            log(f"baseline {kind}: W2")
            results["W2"][kind] = await run_baseline(
                kind,
                {
                    "workload": "W2",
                    "workflow": wf.w2_noop(),
                    "params": {
                        "warmup": 20,
                        "concurrency": p["W2"]["concurrency"],
                        "counts": BASELINE_W2_COUNTS[size],
                        "budget_s": 20,
                    },
                },
                300,
                env,
            )
        if "W3" in workloads:
            log(f"baseline {kind}: W3")
            w3p = p["W3"]
            results["W3"][kind] = await run_baseline(
                kind,
                {
                    "workload": "W3",
                    "workflow": wf.w3_fanout(url + str(w3p["delay_ms"]), w3p["nodes"]),
                    "params": {"executions": w3p["executions"]},
                    "ideal_s": w3p["nodes"] * w3p["delay_ms"] / 1000,
                },
                w3p["budget_s"] + 30,
                env,
            )
        if "W5" in workloads and w5 is not None:
            log(f"baseline {kind}: W5 ({p['W5']['rows']:,} rows per input)")
            path = w5[2] / "w5_workflow.json"
            if not path.exists():
                path.write_text(json.dumps(w5[0]))
            raw = await run_baseline(
                kind,
                {"workload": "W5", "workflow_file": str(path)},
                p["W5"]["timeout_s"] + 30,
                env,
            )
            row = {"rows": p["W5"]["rows"], "source": w5[1], "timeout_s": p["W5"]["timeout_s"]}
            if raw.get("status") == "timeout":
                row.update(status="timeout", timeout_s=p["W5"]["timeout_s"] + 30)
            elif "error" in raw:
                row.update(status="error", error=raw["error"])
            else:
                row.update(
                    status=raw["status"], elapsed=raw["elapsed"], peak_mb=raw["max_rss"] / MB
                )
            results["W5"][kind] = row
            if kind == "plain" and p["W5"].get("ladder"):
                log("baseline plain: W5 size ladder")
                raw = await run_baseline(
                    "plain",
                    {"workload": "W5ladder", "params": {"sizes": p["W5"]["ladder"]}},
                    300,
                    env,
                )
                results["W5"]["ladder"] = raw


# -- HTTP targets -----------------------------------------------------------------------------


async def run_target(
    make: Any,
    groups: list[str],
    params: dict[str, dict[str, Any]],
    upstream: int,
    fresh: bool,
    profiler: Any,
    results: dict[str, Any],
    notes: list[str],
) -> None:
    target: Target | None = None
    sampler: MemSampler | None = None
    tracker: Tracker | None = None

    async def teardown() -> None:
        nonlocal target, sampler, tracker
        if tracker is not None:
            await tracker.stop()
        if sampler is not None:
            sampler.stop()
        if target is not None:
            await asyncio.get_running_loop().run_in_executor(None, target.stop)
        target = sampler = tracker = None

    name = "?"
    try:
        for group in groups:
            if target is None or fresh:
                await teardown()
                target = make()
                name = target.name
                log(f"{name}: starting")
                t0 = time.perf_counter()
                try:
                    await target.start()
                except Exception as exc:  # noqa: BLE001 - recorded, next target
                    results[group][name] = {"error": f"start failed: {exc}"}
                    log(f"{name}: start failed: {exc}")
                    await teardown()
                    continue
                sampler = MemSampler(target.pgids).start()
                idle = sampler.sample() / MB
                tracker = Tracker(target).start()
                starts = results.setdefault("_starts", {}).setdefault(name, [])
                starts.append((time.perf_counter() - t0, idle))
            assert target is not None and sampler is not None and tracker is not None
            log(f"{name}: {group}")
            ctx = Ctx(
                target,
                tracker,
                sampler,
                upstream,
                params[group],
                profiler if group == "W2" else None,
            )
            try:
                timeout = GROUP_TIMEOUT_S.get(group, params[group].get("timeout_s", 60) + 120)
                results[group][name] = await asyncio.wait_for(GROUPS[group](ctx), timeout)
                used = target.modes_used()
                if used is not None:
                    results[group][name]["modes_used"] = used
                    wrong = {
                        m: n for m, n in used["counts"].items() if m not in (target.mode, "-")
                    }  # "-": never started (cancelled)
                    if wrong:
                        msg = (
                            f"{name} {group}: executions ran in mode(s) {wrong}, not "
                            f"{target.mode}: {used['fallback_reason']}"
                        )
                        log("WARNING " + msg)
                        if msg not in notes:
                            notes.append("**WARNING** " + msg)
            except TimeoutError:
                results[group][name] = {
                    "error": f"not finished within the {group} time limit "
                    "(target stopped answering)"
                }
                log(f"{name}: {group} timed out")
            except Exception as exc:  # noqa: BLE001 - recorded in the table
                results[group][name] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{name}: {group} failed: {type(exc).__name__}: {exc}")
    finally:
        await teardown()


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5")
    parser.add_argument(
        "--modes",
        default="inline,prefect",
        help="service modes to run; a mode may carry settings for a variant "
        "row, e.g. prefect:PREFECT_TASK_NODES=network+WORKER_PROCESSES=2",
    )
    parser.add_argument(
        "--service-root",
        default=None,
        help="run start_service.py from this directory instead of the repo "
        "(e.g. a patched copy); the venv stays the repo's",
    )
    parser.add_argument(
        "--baselines",
        default="plain,durable,naive",
        help="plain, durable, naive (or 'none')",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "results.md"))
    parser.add_argument("--json", default=None, help="also write the raw results as JSON")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="py-spy profiles of the service during W2 c=50 into DIR",
    )
    parser.add_argument(
        "--fresh",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="restart each target per workload (default: yes, no with --quick)",
    )
    parser.add_argument("--w5-rows", type=int, default=None)
    parser.add_argument("--w5-timeout", type=float, default=None)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    params = json.loads(json.dumps(QUICK if args.quick else FULL))
    if args.w5_rows:
        params["W5"]["rows"] = args.w5_rows
    if args.w5_timeout:
        params["W5"]["timeout_s"] = args.w5_timeout
    wanted = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    params["W3"]["with_w4"] = "W4" in wanted
    groups = [g for g in ("W1", "W2", "W3", "W5") if g in wanted or (g == "W3" and "W4" in wanted)]
    modes = [m.strip() for m in args.modes.split(",") if m.strip() and m.strip() != "none"]
    kinds = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
    fresh = (not args.quick) if args.fresh is None else args.fresh
    results: dict[str, Any] = {
        "command": "python -m bench.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "quick": args.quick,
        "machine": machine(args.service_root),
        "params": params,
        "workloads": {g: {} for g in groups},
        "notes": [],
        "profiles": {},
    }
    notes: list[str] = results["notes"]
    workdir = Path(tempfile.mkdtemp(prefix="wos-bench-"))
    w5 = None
    if "W5" in groups:
        graph, source = w5_workflow(params["W5"]["rows"], workdir / "uploads")
        params["W5"].update(workflow=graph, source=source)
        w5 = (graph, source, workdir / "uploads")
        (workdir / "uploads").mkdir(exist_ok=True)
    profiler = None
    if args.profile:
        from bench.profile import Profiler

        profiler = Profiler(Path(args.profile))
        if not profiler.available:
            notes.append("--profile: py-spy not found (pip install -r requirements-dev.txt)")
            profiler = None
    upstream = Upstream()
    log(
        f"upstream on 127.0.0.1:{upstream.port}; groups {groups}, modes {modes}, "
        f"baselines {kinds}, workdir {workdir}"
    )
    try:
        local = [k for k in ("plain", "durable") if k in kinds]
        if local:
            await baselines(
                local, groups, params, args.quick, upstream.port, w5, results["workloads"]
            )
        for mode in modes:
            env = {"UPLOAD_DIR": str(workdir / "uploads")} if w5 else {}
            root = Path(args.service_root).resolve() if args.service_root else None
            await run_target(
                lambda mode=mode, env=env, root=root: ServiceTarget(mode, env, root),
                groups,
                params,
                upstream.port,
                fresh,
                profiler,
                results["workloads"],
                notes,
            )
            if profiler is not None:
                results["profiles"].update(_collect_profiles(results, mode))
        if "naive" in kinds:
            env = {"UPLOAD_DIR": str(workdir / "uploads")} if w5 else {}
            await run_target(
                lambda env=env: NaiveTarget(env),
                groups,
                params,
                upstream.port,
                fresh,
                None,
                results["workloads"],
                notes,
            )
    finally:
        upstream.stop()
    for name, starts in results["workloads"].pop("_starts", {}).items():
        secs = [t for t, _ in starts]
        notes.append(
            f"{name}: ready in {min(secs):.1f}–{max(secs):.1f} s after start "
            f"({len(starts)} starts), idle RSS {starts[0][1]:.0f} MB (all processes)"
        )
    for group in groups:  # keep the huge workflow out of the JSON
        params[group].pop("workflow", None)
    results["machine"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["wall_s"] = time.perf_counter() - t_start
    results["target_summary"] = report.target_summary(results)
    return results


def _collect_profiles(results: dict[str, Any], mode: str) -> dict[str, Any]:
    w2 = results["workloads"].get("W2", {}).get(mode, {})
    out = {}
    for key, row in w2.items():
        if isinstance(row, dict) and row.get("profile"):
            out[f"{mode} W2 {key}"] = row.pop("profile")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(amain(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    log(f"wrote {out}")
    for line in results["target_summary"]:
        log(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
