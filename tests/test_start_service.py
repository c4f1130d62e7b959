"""start_service.py helpers that run before any child process starts."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

resource = pytest.importorskip("resource")  # POSIX only, like the limit itself

ROOT = Path(__file__).resolve().parent.parent


def test_open_file_limit_is_raised_for_the_children() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")
    code = (
        "import resource, subprocess, sys, start_service\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "start_service.raise_open_file_limit(4096)\n"
        "child = 'import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])'\n"
        "print(subprocess.check_output([sys.executable, '-c', child], text=True).strip())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    expected = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    assert int(out.stdout) == expected


def test_signal_during_start_up_spawns_nothing_and_exits_non_zero(tmp_path: Path) -> None:
    """Bug 6: SIGTERM while the embedded Prefect server starts ends start-up: no worker, no API,
    the Prefect server stopped, exit status 143."""
    from tests.service_process import free_port, scrubbed_env, stop_group
    from tests.support import node_backend_sqlite

    db = tmp_path / "db.sqlite"
    node_backend_sqlite(db)
    port = free_port()
    env = scrubbed_env(
        API_PORT=str(port),
        PREFECT_SERVER_API_PORT=str(free_port()),
        DATABASE_PATH=str(db),
        PREFECT_HOME=str(tmp_path / "prefect"),
        EXECUTION_MODE="prefect",
        LOG_LEVEL="INFO",
    )
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "start_service.py"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "started prefect-server" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        assert "Prefect API ready" not in log.read_text(), "start-up was too fast to interrupt"
        os.kill(proc.pid, signal.SIGTERM)
        answered = False
        while proc.poll() is None and time.monotonic() < deadline:
            answered = answered or _port_answers(port)
            time.sleep(0.1)
        code = proc.wait(5)
        time.sleep(1)  # a respawn would come within the watch loop's half second
        answered = answered or _port_answers(port)
    finally:
        stop_group(proc, timeout=5)
    text = log.read_text()
    assert code == 128 + signal.SIGTERM, text
    assert not answered
    assert "started worker" not in text and "started api" not in text, text


def _port_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
