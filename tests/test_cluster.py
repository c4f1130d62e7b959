"""Split roles (`start_service.py --role api|worker|prefect`) and the cluster they form on one
PostgreSQL database: real processes, a worker SIGKILLed and another SIGSTOPped past its lease,
and still every execution completes exactly once with one outcome per node."""

import contextlib
import os
import signal
import subprocess
import time
from base64 import b64encode
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import MockServer
from tests.service_process import ROOT, ServiceProcess, free_port, scrubbed_env, venv_python
from tests.support import postgres_database_sync, postgres_query

EXECUTIONS = 120
LEASE_S = 6
NODE_DELAY_S = 0.4
SETTLED = ("completed", "error", "skipped")


def start_role(role: str, *settings: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python start_service.py --role <role>` that is expected to refuse to start."""
    env = scrubbed_env(**dict(s.split("=", 1) for s in settings))
    return subprocess.run(
        [venv_python(), "start_service.py", "--role", role],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_split_roles_refuse_sqlite(tmp_path: Path) -> None:
    for role in ("api", "worker"):
        done = start_role(role, f"DATABASE_PATH={tmp_path / 'db.sqlite'}")
        assert done.returncode == 1
        assert f"--role {role} needs DATABASE_URL on PostgreSQL" in done.stderr
        assert "cannot be shared across machines" in done.stderr


def test_worker_role_in_prefect_mode_needs_prefect_api_url() -> None:
    done = start_role(
        "worker", "DATABASE_URL=postgresql://postgres@127.0.0.1:5432/x", "EXECUTION_MODE=prefect"
    )
    assert done.returncode == 1
    assert "needs PREFECT_API_URL" in done.stderr


def test_unknown_role_is_a_usage_error() -> None:
    done = start_role("coordinator")
    assert done.returncode == 2
    assert "invalid choice: 'coordinator'" in done.stderr


class Role(ServiceProcess):
    """One role of the cluster as its own `./start.sh --role <role>` process group."""

    def __init__(self, workdir: Path, role: str, name: str, **settings: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, name=name, **settings)
        self.role, self.args = role, ("--role", role)

    def wait_healthy(self, timeout: float) -> None:
        if self.role == "api":
            return super().wait_healthy(timeout)
        deadline = time.monotonic() + timeout
        base, path = self.url, "/health/live"
        if self.role == "prefect":
            base, path = f"http://127.0.0.1:{self.prefect_port}", "/api/health"
        with httpx.Client(base_url=base, timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.role} exited; see {self.log_path}")
                try:
                    if client.get(path).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"{self.role} did not start in {timeout} s; see {self.log_path}")

    def signal(self, sig: int) -> None:
        os.killpg(self.pgid, sig)


@pytest.fixture
def database_url() -> Iterator[str]:
    with postgres_database_sync() as url:
        yield url


def sql(url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    import asyncio

    return asyncio.run(postgres_query(url, query, *params))


def workflow(port: int) -> dict[str, Any]:
    """trigger → slow → slow → output: each execution takes about a second."""
    slow = {"method": "GET", "url": f"http://127.0.0.1:{port}/slow"}
    return {
        "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "a", "type": "http", "config": slow},
            {"id": "b", "type": "http", "config": slow},
            {"id": "o", "type": "output"},
        ],
        "connections": [
            {"fromNodeId": "t", "toNodeId": "a"},
            {"fromNodeId": "a", "toNodeId": "b"},
            {"fromNodeId": "b", "toNodeId": "o"},
        ],
    }


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.postgres
def test_cluster_survives_a_killed_and_a_paused_worker(tmp_path: Path, database_url: str) -> None:
    """Two API roles and two worker roles on one fresh PostgreSQL database; 120 executions
    submitted round-robin to both APIs; one worker machine SIGKILLed and the other SIGSTOPped past
    its lease, a replacement worker started, the paused one SIGCONTed once its runs were taken
    over: every execution completes exactly once, every node has one settled log row, and the
    paused worker's late writes were refused."""
    upstream = MockServer({("GET", "/slow"): lambda _req: (200, NODE_DELAY_S)})
    common = {
        "DATABASE_URL": database_url,
        "EXECUTION_MODE": "inline",
        "LEASE_SECONDS": str(LEASE_S),
        "MAX_CONCURRENT_EXECUTIONS": "20",
    }
    roles: list[Role] = []

    def role(kind: str, name: str, **extra: str) -> Role:
        proc = Role(tmp_path / name, kind, name, **{**common, **extra})
        roles.append(proc)
        return proc

    try:
        apis = [role("api", "api-1"), role("api", "api-2")]
        doomed, paused = role("worker", "worker-1"), role("worker", "worker-2")
        with ThreadPoolExecutor(len(roles)) as pool:  # all four start at once
            list(pool.map(lambda proc: proc.start(120), roles))
        # a worker serves only its probes and /metrics
        worker_http = httpx.Client(base_url=doomed.url, timeout=10, trust_env=False)
        assert worker_http.get("/health/ready").status_code in (200, 503)
        assert worker_http.get("/metrics").status_code == 200
        missing = worker_http.post("/api/workflows/execute", json={})
        assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
        assert worker_http.get("/").status_code == 404
        worker_http.close()

        clients = [httpx.Client(base_url=a.url, timeout=30, trust_env=False) for a in apis]
        definition = workflow(upstream.port)
        ids = []
        for i in range(EXECUTIONS):
            answer = clients[i % 2].post(
                "/api/workflows/execute", json={"workflowId": f"wf-{i}", "workflow": definition}
            )
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["executionId"])

        def completed() -> int:
            rows = sql(
                database_url,
                "SELECT count(*) AS n FROM workflow_executions WHERE status = 'completed'",
            )
            return int(rows[0]["n"])

        wait_for(lambda: completed() >= 10, 60, "the first completed executions")
        doomed.signal(signal.SIGKILL)  # a machine gone: supervisor, worker and probes app
        paused.signal(signal.SIGSTOP)  # a machine frozen with its runs in flight
        paused_owner = f"%:{paused.port}:%"
        held = sql(
            database_url,
            'SELECT count(*) AS n, min("leaseExpiresAt") AS expiry FROM wos_executions '
            "WHERE state = 'running' AND \"leaseOwner\" LIKE $1",
            paused_owner,
        )
        assert held[0]["n"] > 0, "the paused worker had nothing in flight"
        replacement = role("worker", "worker-3", MAX_CONCURRENT_EXECUTIONS="100")
        replacement.start(120)

        def taken_over() -> bool:
            rows = sql(
                database_url,
                "SELECT count(*) AS n FROM wos_executions "
                "WHERE state = 'running' AND \"leaseOwner\" LIKE $1",
                paused_owner,
            )
            return int(rows[0]["n"]) == 0

        wait_for(taken_over, 60, "the paused worker's runs to be taken over")
        # not before its leases expired (the last renewal may have come up to LEASE_S / 3
        # before the SIGSTOP, so the time since the stop alone says little)
        assert time.time() >= held[0]["expiry"]
        paused.signal(signal.SIGCONT)

        wait_for(lambda: completed() == EXECUTIONS, 90, "every execution to complete")
        rows = sql(
            database_url,
            'SELECT e.id, e.status, e."completedAt", r.state FROM workflow_executions e '
            'JOIN wos_executions r ON r."executionId" = e.id',
        )
        assert sorted(r["id"] for r in rows) == sorted(ids)
        assert {(r["status"], r["state"]) for r in rows} == {("completed", "done")}
        assert all(r["completedAt"] for r in rows)
        # exactly once: one terminal event per execution, one settled row per node
        ends = sql(
            database_url,
            'SELECT "executionId", count(*) AS n FROM execution_events '
            "WHERE type LIKE 'execution.%' AND type IN "
            "('execution.completed', 'execution.failed', 'execution.cancelled') "
            'GROUP BY "executionId"',
        )
        assert len(ends) == EXECUTIONS and {e["n"] for e in ends} == {1}
        settled = sql(
            database_url,
            'SELECT "executionId", "nodeId", count(*) AS n FROM execution_logs '
            'WHERE status = ANY($1::text[]) GROUP BY "executionId", "nodeId"',
            list(SETTLED),
        )
        assert len(settled) == EXECUTIONS * 4
        twice = [s for s in settled if s["n"] != 1]
        assert twice == [], f"node outcomes recorded more than once: {twice[:5]}"
        node_events = sql(
            database_url,
            "SELECT \"executionId\", data::json->>'nodeId' AS node, count(*) AS n "
            "FROM execution_events WHERE type IN ('node.completed', 'node.failed') "
            'GROUP BY "executionId", node',
        )
        assert len(node_events) == EXECUTIONS * 4 and {e["n"] for e in node_events} == {1}
        # the paused worker came back and its late writes were refused
        wait_for(lambda: "lease lost to another worker" in paused.log_text(), 30, "a refused write")
        assert "lease lost to another worker" not in replacement.log_text()
        for client in clients:
            client.close()
    finally:
        if len(roles) > 3 and roles[3].proc is not None:  # never leave a group stopped
            with contextlib.suppress(ProcessLookupError):
                roles[3].signal(signal.SIGCONT)
        for proc in roles:
            if proc.proc is not None:
                proc.stop(signal.SIGKILL if proc is roles[2] else signal.SIGTERM)
        upstream.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_split_roles_run_executions_in_prefect(tmp_path: Path, database_url: str) -> None:
    """`--role prefect` serves the Prefect API alone; an `api` role and a `worker` role pointed
    at it (PREFECT_API_URL and the auth string) run an execution as a Prefect flow run."""
    auth = "cluster-test-auth"
    prefect_port = free_port()
    prefect = Role(
        tmp_path / "prefect",
        "prefect",
        "prefect",
        PREFECT_SERVER_API_PORT=str(prefect_port),
        PREFECT_SERVER_API_AUTH_STRING=auth,
        API_HOST="127.0.0.1",
    )
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    common = {
        "DATABASE_URL": database_url,
        "EXECUTION_MODE": "prefect",
        "PREFECT_API_URL": api_url,
        "PREFECT_API_AUTH_STRING": auth,
    }
    roles = [prefect, Role(tmp_path / "api", "api", "api", **common)]
    roles.append(Role(tmp_path / "worker", "worker", "worker", **common))
    try:
        prefect.start(180)
        assert httpx.get(f"{api_url}/health", timeout=5).status_code == 200
        unauthorized = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=5)
        assert unauthorized.status_code == 401
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda proc: proc.start(120), roles[1:]))
        with httpx.Client(base_url=roles[1].url, timeout=30, trust_env=False) as client:
            answer = client.post(
                "/api/workflows/execute",
                json={"workflowId": "wf", "workflow": {"nodes": [{"id": "t", "type": "trigger"}]}},
            )
            assert answer.status_code == 200, answer.text
            eid = answer.json()["executionId"]
            deadline = time.monotonic() + 90
            while (status := client.get(f"/api/executions/{eid}").json())["status"] != "completed":
                assert time.monotonic() < deadline, status
                time.sleep(0.3)
        assert status["mode"] == "prefect", status.get("modeReason")
        runs = httpx.post(
            f"{api_url}/flow_runs/filter",
            json={"flow_runs": {"tags": {"all_": [f"execution:{eid}"]}}},
            headers={"Authorization": f"Basic {b64encode(auth.encode()).decode()}"},
            timeout=10,
        ).json()
        assert [r["state"]["type"] for r in runs] == ["COMPLETED"]
        assert "prefect-server" not in roles[2].log_text()  # the worker started no server
    finally:
        for proc in reversed(roles):
            proc.stop()
    assert prefect.proc is not None and prefect.proc.returncode == 0
