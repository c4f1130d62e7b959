"""`GET /metrics`: Prometheus text, summed over the API and two worker processes of the real
service; who may read it; the recording helpers; the Grafana dashboard only charts exported
metrics."""

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import metrics
from config import get_settings
from states import Outcome
from tests.conftest import Service
from tests.e2e import MockServer, RunningService, free_port
from tests.test_api import SIMPLE

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "wos-dashboard.json"
SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def total(found: dict, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for (n, lab), value in found.items()
        if n == name and all(dict(lab).get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("API_KEYS", "svc-key, org-key@org_a")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
async def test_metrics_is_open_without_keys(service: Service) -> None:
    r = await service.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    found = samples(r.text)
    assert found[("wos_queue_depth", (("priority", "normal"),))] == 0


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
async def test_metrics_needs_a_service_key_when_keys_are_set(
    service: Service, keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = service.client
    r = await c.get("/metrics")
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert (await c.get("/metrics", headers={"X-API-Key": "wrong"})).status_code == 401
    r = await c.get("/metrics", headers={"X-API-Key": "org-key"})
    assert r.status_code == 403
    assert r.json() == {"detail": "GET /metrics needs a service key, not an organization key"}
    assert (await c.get("/metrics", headers={"X-API-Key": "svc-key"})).status_code == 200
    r = await c.get("/metrics", headers={"Authorization": "Bearer svc-key"})
    assert r.status_code == 200 and "wos_queue_depth" in r.text
    monkeypatch.setenv("METRICS_PUBLIC", "true")
    get_settings.cache_clear()
    assert (await c.get("/metrics")).status_code == 200
    assert (await c.get("/api/executions/x")).status_code == 401  # only /metrics is public


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
async def test_metrics_answer_without_the_queue_depth_when_the_store_fails(
    service: Service,
) -> None:
    from api.deps import get_store
    from api_service import app

    class Down:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError("store is down")

    async def down() -> Down:
        return Down()

    app.dependency_overrides[get_store] = down
    try:
        r = await service.client.get("/metrics")
    finally:
        app.dependency_overrides.clear()
    assert r.status_code == 200
    assert "wos_executions_submitted_total" in r.text and "wos_queue_depth{" not in r.text


@pytest.mark.parametrize("service", ["sqlite", "memory"], indirect=True)
async def test_in_process_counts_follow_the_executions(service: Service) -> None:
    """One process (no multiprocess folder): the deltas of one submit and one run."""
    before = samples((await service.client.get("/metrics")).text)
    await service.add_workflow("wf1", SIMPLE)
    eid = (await service.execute(workflowId="wf1", organizationId="org_test")).json()
    await service.wait(eid["executionId"])
    after = samples((await service.client.get("/metrics")).text)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("wos_executions_submitted_total", mode="inline") == 1
    assert delta("wos_executions_finished_total", status="completed", mode="inline") == 1
    assert delta("wos_execution_duration_seconds_count") == 1
    assert delta("wos_node_duration_seconds_count", type="trigger", status="completed") == 1
    assert delta("wos_node_duration_seconds_count", type="manualInput", status="completed") == 1
    if service.kind != "memory":
        assert delta("wos_store_commit_seconds_count") >= 2  # start and finish at least
    assert total(after, "wos_executions_running") == 0


def test_execution_run_counts_resumes_fallbacks_and_the_final_mode() -> None:
    finished = metrics.FINISHED.labels("failed", "inline")._value.get()
    fallbacks = metrics.PREFECT_FALLBACKS._value.get()
    resumes = metrics.RESUMES._value.get()
    with metrics.execution_run("prefect", resumed=True) as track:
        assert metrics.RUNNING._value.get() >= 1
        metrics.prefect_fallback()
        track.outcome = Outcome.FAILED
    assert metrics.FINISHED.labels("failed", "inline")._value.get() == finished + 1
    assert metrics.PREFECT_FALLBACKS._value.get() == fallbacks + 1
    assert metrics.RESUMES._value.get() == resumes + 1
    interrupted = metrics.FINISHED.labels("completed", "prefect")._value.get()
    with metrics.execution_run("prefect", resumed=False) as track:
        track.outcome = Outcome.INTERRUPTED  # drained: not finished
    assert metrics.FINISHED.labels("completed", "prefect")._value.get() == interrupted
    metrics.prefect_fallback()  # outside a run: only counted


def test_node_types_outside_the_registry_are_one_label() -> None:
    before = metrics.NODE_SECONDS.labels("other", "error")._sum.get()
    metrics.node_finished("no-such-type", True, 2.0)
    assert metrics.NODE_SECONDS.labels("other", "error")._sum.get() == before + 2.0


def test_grafana_dashboard_charts_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs
    charted = set()
    for expr in exprs:
        names = set(re.findall(r"\b(wos_[a-z_]+)", expr))
        assert names, expr
        for name in names:
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
            assert base in metrics.EXPORTED, (name, expr)
            charted.add(base)
    assert charted == set(metrics.EXPORTED)  # every exported metric has a panel


@pytest.fixture(scope="module")
def slow_api() -> Iterator[MockServer]:
    server = MockServer({("GET", "/slow"): lambda _: (200, 0.4)})
    yield server
    server.close()


@pytest.mark.slow
def test_metrics_add_up_across_two_worker_processes(tmp_path: Path, slow_api: MockServer) -> None:
    """Prefect mode with Prefect unreachable (every run falls back to inline), two workers that
    each run at most two executions at a time: the API's /metrics sums what both recorded."""
    dead = f"http://127.0.0.1:{free_port()}/api"
    svc = RunningService(
        tmp_path,
        "prefect",
        PREFECT_API_URL=dead,
        WORKER_PROCESSES="2",
        MAX_CONCURRENT_EXECUTIONS="2",
        STATE_DIR=str(tmp_path / "state"),
    )
    try:
        workflow = {
            "nodes": [
                {"id": "t", "type": "trigger"},
                {
                    "id": "h",
                    "type": "http",
                    "config": {"httpUrl": f"http://127.0.0.1:{slow_api.port}/slow"},
                },
            ],
            "connections": [{"fromNodeId": "t", "toNodeId": "h"}],
        }
        svc.add_workflow("wf", workflow)
        svc.add_workflow("bad", {"nodes": [{"id": "h", "type": "http", "config": {}}]})
        ids = [svc.execute("wf", {}) for _ in range(8)] + [svc.execute("bad", {})]
        finals = [svc.wait(eid, timeout=60) for eid in ids]
        assert [f["status"] for f in finals] == ["completed"] * 8 + ["failed"]
        owners = {svc.row(eid)["run"]["leaseOwner"] for eid in ids}
        workers = {owner.split(":")[-2] for owner in owners if owner}
        assert len(workers) == 2, owners  # both worker processes ran some
        found = samples(svc.client.get("/metrics").text)
        files = sorted(p.name for p in (tmp_path / "state" / "metrics").iterdir())
    finally:
        svc.stop()
    assert total(found, "wos_executions_submitted_total", mode="prefect") == 9
    assert total(found, "wos_executions_finished_total", status="completed", mode="inline") == 8
    assert total(found, "wos_executions_finished_total", status="failed", mode="inline") == 1
    assert total(found, "wos_executions_finished_total", mode="prefect") == 0
    assert total(found, "wos_prefect_fallbacks_total") == 9
    assert total(found, "wos_execution_duration_seconds_count") == 9
    assert total(found, "wos_execution_duration_seconds_sum") >= 8 * 0.4
    assert total(found, "wos_node_duration_seconds_count", type="http", status="completed") == 8
    assert total(found, "wos_node_duration_seconds_count", type="http", status="error") == 1
    assert total(found, "wos_node_duration_seconds_count", type="trigger") == 8
    assert total(found, "wos_store_commit_seconds_count") >= 9 * 2
    assert total(found, "wos_executions_running") == 0
    assert total(found, "wos_resumes_total") == 0
    assert found[("wos_queue_depth", (("priority", "normal"),))] == 0
    for pid in workers:  # each worker wrote its own files, which the API summed
        assert any(name.endswith(f"_{pid}.db") for name in files), (pid, files)


@pytest.mark.slow
def test_ready_on_the_all_in_one_default(tmp_path: Path) -> None:
    svc = RunningService(tmp_path, "inline", API_KEYS="k1")
    try:
        deadline = time.monotonic() + 20
        while (r := svc.client.get("/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert r.json()["status"] == "ready"
        assert svc.client.get("/health/live").json() == {"status": "ok"}
        assert svc.client.get("/metrics").status_code == 401
        ok = svc.client.get("/metrics", headers={"X-API-Key": "k1"})
        assert ok.status_code == 200 and "wos_queue_depth" in ok.text
    finally:
        svc.stop()


@pytest.mark.slow
def test_a_killed_worker_leaves_no_running_count_and_its_runs_count_as_resumed(
    tmp_path: Path, slow_api: MockServer
) -> None:
    """SIGKILL of the worker while it runs two executions: the supervisor restarts it and drops
    the dead process's live gauge (mark_process_dead), the new one resumes both."""
    svc = RunningService(tmp_path, "inline", LEASE_SECONDS="1.5")
    try:
        workflow = {
            "nodes": [
                {"id": "t", "type": "trigger"},
                {
                    "id": "h",
                    "type": "http",
                    "config": {"httpUrl": f"http://127.0.0.1:{slow_api.port}/slow"},
                },
                {
                    "id": "h2",
                    "type": "http",
                    "config": {"httpUrl": f"http://127.0.0.1:{slow_api.port}/slow"},
                },
                {
                    "id": "h3",
                    "type": "http",
                    "config": {"httpUrl": f"http://127.0.0.1:{slow_api.port}/slow"},
                },
            ],
            "connections": [
                {"fromNodeId": "t", "toNodeId": "h"},
                {"fromNodeId": "h", "toNodeId": "h2"},
                {"fromNodeId": "h2", "toNodeId": "h3"},
            ],
        }
        svc.add_workflow("wf", workflow)
        ids = [svc.execute("wf", {}) for _ in range(2)]
        deadline = time.monotonic() + 20
        while True:
            running = samples(svc.client.get("/metrics").text)
            if total(running, "wos_executions_running") == 2:
                break
            assert time.monotonic() < deadline, running
            time.sleep(0.05)
        owner = svc.row(ids[0])["run"]["leaseOwner"]
        os.kill(int(owner.split(":")[-2]), signal.SIGKILL)
        finals = [svc.wait(eid, timeout=60) for eid in ids]
        assert [f["status"] for f in finals] == ["completed", "completed"]
        assert all(f["attempts"] == 2 for f in finals), finals
        found = samples(svc.client.get("/metrics").text)
    finally:
        svc.stop()
    assert total(found, "wos_executions_running") == 0
    assert total(found, "wos_resumes_total") == 2
    assert total(found, "wos_executions_finished_total", status="completed") == 2


async def test_queue_depth_counts_queued_executions_by_priority(store: Any) -> None:
    from database import NewExecution
    from database.claim_order import PRIORITIES
    from database.probes import queued_by_priority

    assert await queued_by_priority(store) == {"high": 0, "normal": 0, "low": 0}
    for i, name in enumerate(["high", "low", "low", "normal", "low"]):
        await store.create_execution(
            NewExecution(
                execution_id=f"e{i}",
                workflow_id="w",
                workflow_name=None,
                organization_id=None,
                inputs={},
                definition="{}",
                mode="inline",
                priority=PRIORITIES[name],
            )
        )
    assert await queued_by_priority(store) == {"high": 1, "normal": 1, "low": 3}
    await store.claim("w1", 2, 30)  # running ones are not queued
    assert sum((await queued_by_priority(store)).values()) == 3
