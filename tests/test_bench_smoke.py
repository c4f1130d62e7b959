"""The benchmark suite's quick smoke run: it must keep working (no timed assertions: benchmark
figures are never test criteria)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_quick_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    raw = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--modes",
            "inline,prefect",
            "--baselines",
            "plain,durable",
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
    text = out.read_text()
    for heading in ("## Machine", "## W1", "## W2", "## W3", "## W4", "## W5"):
        assert heading in text, heading
    for row in (
        "service, inline mode",
        "service, prefect mode",
        "plain asyncio",
        "1 SQLite commit/node",
    ):
        assert row in text, row
    assert "(not run)" not in text
    assert "start failed" not in text, text
    # every service row really ran in its mode (prefect mode must not have fallen back)
    assert "⚠ ran as" not in text, text
