"""bench/cluster.py keeps working (no timed assertions: benchmark figures are never test
criteria): a tiny run on PostgreSQL completes every execution in the mode asked for and accounts
the CPU of the service's processes and of PostgreSQL's backends. (Its SQLite rows differ only in
the store's URL; the SQLite service is benchmarked by tests/test_bench_smoke.py's run.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_cluster_runs_w2_on_postgres(tmp_path: Path) -> None:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    out, raw = tmp_path / "cluster.md", tmp_path / "cluster.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cluster",
            "--stores",
            "postgres",
            "--rows",
            "inline:WORKER_PROCESSES=2",
            "--count",
            "6",
            "--concurrency",
            "3",
            "--settle",
            "0",
            "--out",
            str(out),
            "--json",
            str(raw),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(raw.read_text())
    [r] = results
    assert r["store"] == "postgres"
    assert r["statuses"] == {"completed": 6}, r
    assert r["modes"] == {"inline": 11}, r  # 5 warm-up executions + 6
    cpu = r["cpu_ms_per_exec"]
    assert cpu["worker"] > 0 and cpu["api"] > 0 and cpu["postgres"] > 0, r
    assert "| postgres | `inline:WORKER_PROCESSES=2` |" in out.read_text()
