"""Optional sampling profiles of the service's processes during a workload (py-spy).

`Profiler.start(target, label)` attaches `py-spy record --format raw --nonblocking` to the API,
worker(s) and Prefect server of the target; `stop()` ends them (SIGINT) and summarises each
profile: top functions by own time and by inclusive time, and own time per package. Samples
are taken only from the thread holding the GIL (`--gil`), so percentages are shares of the
process's Python CPU time (C code that releases the GIL, e.g. SQLite's own work, and waits for
the GIL are not in them; the per-process CPU from /proc in the W2 table covers everything).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import pids_by_role

ROLES = ("api", "worker", "prefect-server", "naive-api")
# plumbing frames that are on (nearly) every stack: left out of the inclusive ranking
PLUMBING = re.compile(
    r"_bootstrap|Thread\.run |run_forever|run_until_complete|_run_once|Runner\.run|_run_module|"
    r"_run_code|<module>|Command\.|Context\.invoke|^main |^run |asyncio_run|Server\.|"
    r"Handle\._run|^_worker |_WorkItem\.run|Middleware|middleware|wrap_app_handling|"
    r"Router\.|APIRouter|_IncludedRouter|Route\.handle|APIRoute\.handle|request_response|"
    r"Starlette\.__call__|FastAPI\.__call__|RequestResponseCycle\.run_asgi|BodyLimit"
)
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _short(path: str) -> tuple[str, str]:
    """(package, short file) of a frame's file path."""
    root = str(Path(__file__).resolve().parent.parent) + "/"
    if "site-packages/" in path:
        rel = path.split("site-packages/", 1)[1]
        return rel.split("/", 1)[0].removesuffix(".py"), rel
    if path.startswith(root):
        rel = path[len(root) :]
        return "service:" + rel.split("/", 1)[0].removesuffix(".py"), rel
    m = re.search(r"lib/python3\.\d+/(.+)$", path)
    if m:
        rel = m.group(1)
        return "stdlib:" + rel.split("/", 1)[0].removesuffix(".py"), rel
    if path.startswith("<frozen "):
        return "stdlib:" + path[8:].rstrip(">"), path
    return path.rsplit("/", 1)[-1] or "?", path


def summarise(raw_file: Path, top: int = 20) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for part in stack.split(";"):
            m = FRAME.match(part.strip())
            if m and m.group("file"):
                package, short = _short(m.group("file"))
                frames.append((f"{m.group('func')} ({short})", package))
        if not frames:
            continue
        total += count
        leaf, leaf_pkg = frames[-1]
        own[leaf] += count
        packages[leaf_pkg] += count
        for name in {f for f, _ in frames}:
            if not PLUMBING.search(name):
                inclusive[name] += count

    def pct(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "top_own": pct(own, top),
        "top_inclusive": pct(inclusive, top + 10),
        "own_by_package": pct(packages, 15),
    }


class Profiler:
    def __init__(self, outdir: Path, rate: int = 100) -> None:
        self.outdir, self.rate = outdir, rate
        self.exe = py_spy()
        self.running: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        self.label = ""

    @property
    def available(self) -> bool:
        return self.exe is not None

    def start(self, target: Any, label: str) -> None:
        if self.exe is None:
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.label = f"{target.name}-{label}"
        for role_name, pids in pids_by_role(target.pgids).items():
            if role_name not in ROLES:
                continue
            for i, pid in enumerate(pids):
                name = role_name + (f"{i + 1}" if len(pids) > 1 else "")
                out = self.outdir / f"{self.label}-{name}.txt"
                proc = subprocess.Popen(
                    [
                        self.exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--rate",
                        str(self.rate),
                        "--nonblocking",
                        "--gil",
                        "--full-filenames",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self.running.append((name, out, proc))

    def stop(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for _, _, proc in self.running:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
        for name, out, proc in self.running:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if out.exists():
                summary = summarise(out)
                summary["file"] = str(out)
                results[name] = summary
                (out.with_suffix(".summary.txt")).write_text(render_summary(name, summary))
            else:
                results[name] = {"error": "py-spy wrote no profile (ptrace not permitted?)"}
        self.running = []
        return results


def render_summary(name: str, summary: dict[str, Any]) -> str:
    lines = [
        f"# {name}: {summary['samples']} samples (GIL-holding samples only)",
        "",
        "## own time",
    ]  # noqa: E501
    lines += [f"{p:5.1f}%  {f}" for f, p in summary["top_own"]]
    lines += ["", "## inclusive time"] + [f"{p:5.1f}%  {f}" for f, p in summary["top_inclusive"]]
    lines += ["", "## own time by package"] + [
        f"{p:5.1f}%  {f}" for f, p in summary["own_by_package"]
    ]
    return "\n".join(lines) + "\n"
