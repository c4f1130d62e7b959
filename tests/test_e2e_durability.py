"""Crash and shutdown tests against the real service: SIGKILL of the process group mid-run then
an immediate restart on the same port and database, SIGTERM drain, cancel in prefect mode, and
the Node backend writing the same SQLite file from another process."""

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from tests.e2e import FINAL_STATES, MockServer, RunningService, group_alive
from tests.support import postgres_database_sync

pytestmark = pytest.mark.slow


@pytest.fixture
def mock() -> Iterator[MockServer]:
    server = MockServer(
        {
            ("GET", "/first"): lambda _: (200, {"step": 1}),
            ("GET", "/slow"): lambda _: (200, 2.5),
            ("GET", "/last"): lambda _: (200, {"step": 3}),
        }
    )
    yield server
    server.close()


def three_steps(port: int) -> dict[str, Any]:
    nodes = [{"id": "t", "type": "trigger"}] + [
        {"id": name, "type": "http", "config": {"httpUrl": f"http://127.0.0.1:{port}/{name}"}}
        for name in ("first", "slow", "last")
    ]
    ids = [n["id"] for n in nodes]
    return {
        "nodes": nodes,
        "connections": [
            {"fromNodeId": a, "toNodeId": b} for a, b in zip(ids, ids[1:], strict=False)
        ],
    }


def wait_for_log(
    svc: RunningService, eid: str, node: str, status: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(log["nodeId"] == node and log["status"] == status for log in svc.row(eid)["logs"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"{node} never logged {status}")


@pytest.mark.parametrize(
    ("mode", "database"),
    [
        ("prefect", "sqlite"),
        ("inline", "sqlite"),
        pytest.param("inline", "postgres", marks=pytest.mark.postgres),
    ],
)
def test_sigkill_mid_run_resumes_without_rerunning_completed_nodes(
    tmp_path: Path, mock: MockServer, mode: str, database: str
) -> None:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database_sync()) if database == "postgres" else None
        _sigkill_then_resume(tmp_path, mock, mode, url)


def _sigkill_then_resume(tmp_path: Path, mock: MockServer, mode: str, url: str | None) -> None:
    """SIGKILL of the whole process group (a machine gone) mid-node: nothing of it is left, and
    the same command on the same port and database resumes the run."""
    svc = RunningService(tmp_path, mode, database_url=url)
    members = subprocess.run(["pgrep", "-g", str(svc.pgid)], capture_output=True, text=True)
    # start_service, the worker and the API (and the Prefect server in prefect mode)
    assert len(members.stdout.split()) >= (4 if mode == "prefect" else 3), members.stdout
    svc.add_workflow("wf", three_steps(mock.port))
    eid = svc.execute("wf", {})
    wait_for_log(svc, eid, "slow", "running")
    # the node's request reached the server (its "running" row is committed before it is sent:
    # a kill in between would leave nothing in flight)
    deadline = time.monotonic() + 60
    while not mock.calls("GET", "/slow") and time.monotonic() < deadline:
        time.sleep(0.02)
    svc.stop(signal.SIGKILL)
    assert not group_alive(svc.pgid)
    assert svc.row(eid)["status"] == "running"

    again = RunningService(tmp_path, mode, database_url=url, API_PORT=str(svc.port))
    try:
        final = again.wait(eid)
        states = (
            sorted(r["state"]["type"] for r in again.prefect_runs(eid)) if mode == "prefect" else []
        )
    finally:
        again.stop()
    assert final["status"] == "completed"
    assert final["attempts"] == 2 and final["resumedAt"]
    assert len(mock.calls("GET", "/first")) == 1  # completed before the crash: not run again
    assert len(mock.calls("GET", "/slow")) == 2  # in flight at the crash: at-least-once
    assert len(mock.calls("GET", "/last")) == 1
    slow_rows = [log["status"] for log in again.row(eid)["logs"] if log["nodeId"] == "slow"]
    assert slow_rows == ["running", "running", "completed"]
    assert final["nodeResults"]["last"]["outputData"] == {"step": 3}
    if mode == "prefect":
        assert states == ["COMPLETED", "CRASHED"]  # the dead worker's run is closed, not RUNNING


def test_cancel_in_prefect_mode_ends_the_flow_run_cancelled(
    prefect_service: RunningService, mock: MockServer
) -> None:
    svc = prefect_service
    svc.add_workflow("wf_cancel", three_steps(mock.port))
    eid = svc.execute("wf_cancel", {})
    wait_for_log(svc, eid, "slow", "running")
    answer = svc.client.post(f"/api/executions/{eid}/cancel").json()
    assert answer["success"] is True
    final = svc.wait(eid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        runs = svc.prefect_runs(eid)
        if runs and runs[0]["state"]["type"] == "CANCELLED":
            break
        time.sleep(0.2)
    row = svc.row(eid)
    assert final["status"] == "cancelled" and final["completedAt"]
    assert [run["state"]["type"] for run in runs] == ["CANCELLED"]
    slow = [log for log in row["logs"] if log["nodeId"] == "slow"]
    assert [log["status"] for log in slow] == ["running", "error"]
    assert slow[1]["error"] == "Execution cancelled by user"
    assert not any(log["nodeId"] == "last" for log in row["logs"])
    assert len(mock.calls("GET", "/last")) == 0


GRACE_S = Settings.model_fields["SHUTDOWN_GRACE_SECONDS"].default
"""The service's default grace, which the test services run with."""


def final_flow_runs(svc: RunningService, eid: str, count: int) -> list[dict[str, Any]]:
    """The execution's flow runs once `count` of them are final (a flow run's last state is
    reported after the execution's row is)."""
    deadline = time.monotonic() + 10
    while True:
        runs = svc.prefect_runs(eid)
        final = [r for r in runs if r["state"] and r["state"]["type"] in FINAL_STATES]
        if len(final) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["inline", "prefect"])
def test_sigterm_drains_in_flight_node_and_restart_finishes(
    tmp_path: Path, mock: MockServer, mode: str
) -> None:
    """SIGTERM to the whole process group (as Ctrl-C): the in-flight node finishes, no new one
    starts, the execution is left resumable, and everything is gone once the node finished, not
    after the grace period. In prefect mode the interrupted flow run ends Crashed (reported by
    the draining worker itself: the embedded Prefect server outlives the drain)."""
    svc = RunningService(tmp_path, mode)
    svc.add_workflow("wf", three_steps(mock.port))
    eid = svc.execute("wf", {})
    wait_for_log(svc, eid, "slow", "running")
    took = svc.stop(signal.SIGTERM)
    text = svc.log_text()
    assert took < GRACE_S - 2, f"the stop took {took:.1f} s of the {GRACE_S} s grace period"
    assert f"execution {eid} interrupted" in text  # the drained run's outcome
    assert "Crash detected" not in text
    row = svc.row(eid)
    assert row["status"] == "running"
    assert [log["status"] for log in row["logs"] if log["nodeId"] == "slow"] == [
        "running",
        "completed",
    ]  # the in-flight node finished inside the grace period
    assert not any(log["nodeId"] == "last" for log in row["logs"])

    again = RunningService(tmp_path, mode, API_PORT=str(svc.port))
    try:
        final = again.wait(eid)
        [run] = again.sql('SELECT "crashResumes" FROM wos_executions WHERE "executionId" = ?', eid)
        flow_runs = final_flow_runs(again, eid, 2) if mode == "prefect" else []
    finally:
        again.stop()
    assert final["status"] == "completed"
    assert run["crashResumes"] == 0  # a graceful stop is never counted as a worker crash
    assert len(mock.calls("GET", "/slow")) == 1 and len(mock.calls("GET", "/last")) == 1
    assert "Crash detected" not in again.log_text()
    if mode == "prefect":
        states = {
            tag: r["state"] for r in flow_runs for tag in r["tags"] if tag.startswith("attempt:")
        }
        assert sorted(states) == ["attempt:1", "attempt:2"]
        assert states["attempt:1"]["type"] == "CRASHED"
        # the drained worker's own report, not `mark_crashed`'s at the resume
        assert f"Execution {eid} interrupted" in states["attempt:1"]["message"]
        assert states["attempt:2"]["type"] == "COMPLETED"


NODE_WRITER = r"""
import json, sqlite3, sys, time, os
db, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, timeout=5, isolation_level=None)  # the Node backend's busy_timeout
conn.execute("PRAGMA busy_timeout = 5000")
errors, worst, seen, own = [], 0.0, set(), 0
while not os.path.exists(stop):
    try:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM workflow_executions "
            "WHERE triggeredByName IS NULL AND id NOT LIKE 'node_%'")]
        for eid in ids:
            t = time.monotonic()
            conn.execute("UPDATE workflow_executions SET triggeredByName = 'Ana', "
                         "versionNumber = 3 "
                         "WHERE id = ?", (eid,))
            worst = max(worst, time.monotonic() - t)
            seen.add(eid)
        t = time.monotonic()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO workflow_executions (id, workflowId, status, createdAt) "
                     "VALUES (?, 'wf', 'running', '2025-01-01T00:00:00.000Z')", (f"node_{own}",))
        conn.execute("INSERT INTO execution_logs (id, executionId, nodeId, status) "
                     "VALUES (?, ?, 'x', 'running')", (f"nl_{own}", f"node_{own}"))
        conn.execute("COMMIT")
        worst = max(worst, time.monotonic() - t)
        own += 1
    except sqlite3.Error as exc:
        errors.append(str(exc))
    time.sleep(0.01)
print(json.dumps({"errors": errors, "worst": worst, "updated": len(seen), "own": own}))
"""


def test_node_backend_writing_the_same_file_never_sees_a_lock_error(
    tmp_path: Path, mock: MockServer
) -> None:
    svc = RunningService(tmp_path, "inline")
    stop = tmp_path / "stop-writer"
    writer = subprocess.Popen(
        [sys.executable, "-c", NODE_WRITER, str(svc.db), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wf = three_steps(mock.port)
        wf["nodes"][2]["config"]["httpUrl"] = wf["nodes"][1]["config"]["httpUrl"]  # no slow node
        svc.add_workflow("wf", wf)
        with ThreadPoolExecutor(25) as pool:
            ids = list(pool.map(lambda _: svc.execute("wf", {}), range(50)))
        finals = [svc.wait(eid) for eid in ids]
        time.sleep(0.3)
    finally:
        stop.touch()
        report = json.loads(writer.communicate(timeout=30)[0])
        svc.stop()
    assert [f["status"] for f in finals] == ["completed"] * 50
    assert report["errors"] == [], report["errors"][:3]
    assert report["worst"] < 5.0  # the Node backend's busy timeout
    conn = sqlite3.connect(svc.db)
    assert conn.execute(
        "SELECT COUNT(*) FROM workflow_executions WHERE id LIKE 'node_%' AND status = 'running'"
    ).fetchone() == (report["own"],)  # Decision 9
    assert conn.execute(
        "SELECT COUNT(*) FROM workflow_executions WHERE triggeredByName = 'Ana' "
        "AND id NOT LIKE 'node_%'"
    ).fetchone() == (50,)
