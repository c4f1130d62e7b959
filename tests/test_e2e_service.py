"""The service as a user runs it: Prefect under a burst, only network nodes as task runs, fallback
to inline. (The process group's SIGKILL and restart: tests/test_e2e_durability.py.)"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e import MockServer, RunningService, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = MockServer({("GET", "/api/item"): lambda _: (200, {"value": 21})})
    yield server
    server.close()


def small_workflow(port: int) -> dict[str, object]:
    return {
        "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "h", "type": "http", "config": {"httpUrl": f"http://127.0.0.1:{port}/api/item"}},
            {
                "id": "a",
                "type": "addField",
                "config": {"addFieldName": "ok", "addFieldValue": "yes"},
            },
            {"id": "o", "type": "output"},
        ],
        "connections": [
            {"fromNodeId": "t", "toNodeId": "h"},
            {"fromNodeId": "h", "toNodeId": "a"},
            {"fromNodeId": "a", "toNodeId": "o"},
        ],
    }


def test_fifty_executions_at_once_all_complete_through_prefect(
    prefect_service: RunningService, mock: MockServer
) -> None:
    svc = prefect_service
    svc.add_workflow("burst", small_workflow(mock.port))
    with ThreadPoolExecutor(50) as pool:
        ids = list(pool.map(lambda _: svc.execute("burst", {}), range(50)))
    finals = [svc.wait(eid, timeout=300) for eid in ids]
    assert [f["status"] for f in finals] == ["completed"] * 50
    for eid in ids:
        row = svc.row(eid)
        assert row["run"]["mode"] == "prefect", row["run"]["modeReason"]
        assert row["run"]["flowRunId"]
        assert row["nodeResults"]["o"]["outputData"] == {"value": 21, "ok": "yes"}
    # PREFECT_TASK_NODES=all (the default): every node is a task run (unlabelled: type:id)
    tasks = svc.prefect_task_runs(svc.row(ids[0])["run"]["flowRunId"], 4)
    assert [(t["name"], t["state"]["type"]) for t in tasks] == [
        (name, "COMPLETED") for name in ("trigger:t", "http:h", "addField:a", "output:o")
    ]
    log = svc.log_text()
    assert "database is locked" not in log
    assert "retryable status code 503" not in log


def test_only_network_nodes_are_task_runs_with_prefect_task_nodes_network(
    tmp_path: Path, mock: MockServer
) -> None:
    svc = RunningService(tmp_path, "prefect", PREFECT_TASK_NODES="network")
    try:
        svc.add_workflow("wf", small_workflow(mock.port))
        eid = svc.execute("wf", {})
        assert svc.wait(eid)["status"] == "completed"
        [flow_run] = svc.prefect_runs(eid)
        tasks = svc.prefect_task_runs(flow_run["id"], 1)
    finally:
        svc.stop()
    assert flow_run["state"]["type"] == "COMPLETED"
    assert flow_run["name"] == f"Fixture · {eid}"
    assert [(t["name"], t["state"]["type"]) for t in tasks] == [("http:h", "COMPLETED")]


def test_falls_back_to_inline_when_prefect_is_unreachable(tmp_path: Path, mock: MockServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    svc = RunningService(tmp_path, "prefect", PREFECT_API_URL=dead)
    try:
        svc.add_workflow("wf", small_workflow(mock.port))
        final = svc.wait(svc.execute("wf", {}))
        assert final["status"] == "completed"
        assert final["mode"] == "inline" and "Prefect API unreachable" in final["modeReason"]
    finally:
        svc.stop()
    assert "Prefect API unreachable" in svc.log_text()
