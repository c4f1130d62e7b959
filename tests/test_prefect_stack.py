"""The service on Prefect's own production setup (tests/prefect_stack.py): the Prefect server on
PostgreSQL with prefect-redis messaging as two `--no-services` API replicas and one
`prefect server services start` process; an `api` role and two `worker` roles of the service on
a fresh PostgreSQL database, each worker on another replica through PREFECT_API_URL."""

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.e2e import MockServer
from tests.prefect_stack import PrefectStack
from tests.support import PG_ADMIN_URL, postgres_database_sync, postgres_query
from tests.test_cluster import Role

EXECUTIONS = 6
TASK_NODES = 3  # trigger, http, output: every node is a task run (PREFECT_TASK_NODES=all)
PROTECTED_BLOCK_TYPES = {"secret", "webhook", "local-file-system"}
"""Block types Prefect's server expects to exist (`_install_protected_system_blocks`)."""


@pytest.fixture
def database_url() -> Iterator[str]:
    with postgres_database_sync() as url:
        yield url


def eventually(check: Any, timeout: float, what: str) -> Any:
    """`check()`'s first truthy answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def flow_runs(stack: PrefectStack, replica: int, eid: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"tags": {"all_": [f"execution:{eid}"]}}}
    runs: list[dict[str, Any]] = stack.api(replica, "POST", "/flow_runs/filter", json=body)
    return runs


def task_runs(stack: PrefectStack, replica: int, flow_run_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    runs: list[dict[str, Any]] = stack.api(replica, "POST", "/task_runs/filter", json=body)
    return runs


@pytest.mark.slow
@pytest.mark.postgres
def test_executions_run_on_the_prefect_production_stack(
    tmp_path: Path, database_url: str, prefect_stack: PrefectStack
) -> None:
    """Executions submitted to an api role run on two worker roles, the first on replica 1 and
    the second on replica 2: each is one Completed flow run with its task runs, the same through
    both replicas (state shared in PostgreSQL; the task runs reach it as events over Redis,
    recorded by the services process), with the flow run's events persisted."""
    stack = prefect_stack
    upstream = MockServer({("GET", "/ok"): lambda _req: (200, {"ok": True})})
    definition = {
        "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "h", "type": "http", "config": {"url": f"http://127.0.0.1:{upstream.port}/ok"}},
            {"id": "o", "type": "output"},
        ],
        "connections": [
            {"fromNodeId": "t", "toNodeId": "h"},
            {"fromNodeId": "h", "toNodeId": "o"},
        ],
    }
    common = {
        "DATABASE_URL": database_url,
        "EXECUTION_MODE": "prefect",
        "PREFECT_API_AUTH_STRING": stack.auth,
    }
    api = Role(tmp_path / "api", "api", "api", PREFECT_API_URL=stack.api_urls[0], **common)
    workers = [
        Role(
            tmp_path / f"worker-{i + 1}",
            "worker",
            f"worker-{i + 1}",
            **common,
            PREFECT_API_URL=url,
            MAX_CONCURRENT_EXECUTIONS="2",
        )
        for i, url in enumerate(stack.api_urls)
    ]
    roles = [api, *workers]
    try:
        for role in roles:
            role.start(120)
        with httpx.Client(base_url=api.url, timeout=30, trust_env=False) as client:
            ids = []
            for i in range(EXECUTIONS):
                answer = client.post(
                    "/api/workflows/execute", json={"workflowId": f"wf-{i}", "workflow": definition}
                )
                assert answer.status_code == 200, answer.text
                ids.append(answer.json()["executionId"])

            def finished() -> list[dict[str, Any]] | None:
                rows = [client.get(f"/api/executions/{eid}").json() for eid in ids]
                return rows if all(r["status"] in ("completed", "error") for r in rows) else None

            executions = eventually(finished, 120, "every execution to finish")
        assert [(e["status"], e["mode"]) for e in executions] == [("completed", "prefect")] * len(
            ids
        ), [e.get("modeReason") or e.get("error") for e in executions]
        assert len(upstream.requests) == EXECUTIONS

        flow_run_ids = []
        for eid in ids:
            seen = [flow_runs(stack, replica, eid) for replica in (0, 1)]
            assert seen[0] == seen[1], "the replicas disagree about a flow run"
            assert [r["state"]["type"] for r in seen[0]] == ["COMPLETED"]
            flow_run_id = seen[0][0]["id"]
            flow_run_ids.append(flow_run_id)

            def recorded(replica: int, run_id: str = flow_run_id) -> list[dict[str, Any]] | None:
                runs = task_runs(stack, replica, run_id)
                done = [r for r in runs if (r["state"] or {}).get("type") == "COMPLETED"]
                return runs if len(done) == TASK_NODES else None

            for replica in (0, 1):
                runs = eventually(
                    lambda replica=replica: recorded(replica), 60, f"{eid}'s task runs"
                )
                assert len(runs) == TASK_NODES

            def persisted(run_id: str = flow_run_id) -> set[str] | None:
                body = {"filter": {"resource": {"id": [f"prefect.flow-run.{run_id}"]}}}
                events = stack.api(1, "POST", "/events/filter", json=body)["events"]
                names = {str(e["event"]) for e in events}
                return names if "prefect.flow-run.Completed" in names else None

            names = eventually(persisted, 60, f"{eid}'s Completed event")
            assert {"prefect.flow-run.Pending", "prefect.flow-run.Running"} <= names
        # each worker created its flow runs through its own replica: both took a share
        started = [
            re.findall(r"started \(prefect, flow run ([0-9a-f-]{36})\)", w.log_text())
            for w in workers
        ]
        assert all(started), "a worker (and so its replica) ran no flow run"
        assert sorted(started[0] + started[1]) == sorted(flow_run_ids)
        # the Prefect stack outlived the load, services process included
        assert all(stack.running().values()), stack.running()
    finally:
        for role in reversed(roles):
            role.stop()
        upstream.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_the_stack_runs_prefect_services_beside_no_services_replicas(
    prefect_stack: PrefectStack,
) -> None:
    """The replicas run no services (`--no-services`), so a run scheduled in the past turns Late
    only through the services process; both replicas ask for the auth string."""
    stack = prefect_stack
    for url in stack.api_urls:
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert httpx.post(f"{url}/flow_runs/filter", json={}, timeout=5).status_code == 401
    flow = stack.api(0, "POST", "/flows/", json={"name": f"late-{uuid4().hex[:8]}"})
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    run = stack.api(
        0,
        "POST",
        "/flow_runs/",
        json={
            "flow_id": flow["id"],
            "state": {
                "type": "SCHEDULED",
                "name": "Scheduled",
                "state_details": {"scheduled_time": past},
            },
        },
    )
    assert run["state"]["name"] == "Scheduled"
    late = eventually(
        lambda: stack.api(1, "GET", f"/flow_runs/{run['id']}")["state"]["name"] == "Late",
        30,
        "the late-runs service to mark the run Late",
    )
    assert late
    assert stack.running() == {"services": True, "server-1": True, "server-2": True}
    assert "Starting services" in stack.log_text("services")


@pytest.mark.slow
@pytest.mark.postgres
def test_the_migration_step_registers_the_block_types_once_and_is_idempotent(
    prefect_stack: PrefectStack,
) -> None:
    """The block types the replicas serve were registered by the migration step on the fresh
    database, not by the replicas (registration off, started together: none of them exited on
    `uq_block_type__slug`); the step run again on the up-to-date database succeeds and keeps
    them: the same rows, updated in place."""
    stack = prefect_stack
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{stack.database}"

    def block_types() -> list[dict[str, Any]]:
        query = "SELECT id, slug, updated FROM block_type ORDER BY slug"
        return asyncio.run(postgres_query(url, query))

    before = block_types()
    slugs = sorted(row["slug"] for row in before)
    assert PROTECTED_BLOCK_TYPES <= set(slugs), slugs
    assert stack.replicas_started is not None
    assert max(row["updated"] for row in before) < stack.replicas_started
    for replica in range(len(stack.api_urls)):
        served = stack.api(replica, "POST", "/block_types/filter", json={})
        assert sorted(b["slug"] for b in served) == slugs

    assert stack.migrate() == 0
    after = block_types()
    assert [(r["id"], r["slug"]) for r in after] == [(r["id"], r["slug"]) for r in before]
    assert min(row["updated"] for row in after) > stack.replicas_started
    done = re.findall(
        r"Prefect database migrated; (\d+) block types registered", stack.log_text("migrate")
    )
    assert done == [str(len(slugs))] * 2
    assert all(stack.running().values()), stack.running()
