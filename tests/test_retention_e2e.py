"""Retention in the real service (`./start.sh`): the worker process prunes finished executions
beyond EXECUTION_RETENTION_MAX within a few RETENTION_INTERVAL_SECONDS, with their logs and
events, and keeps the newest ones and the Node backend's own rows."""

import contextlib
import time
from pathlib import Path

import pytest

from tests.e2e import RunningService
from tests.support import postgres_database_sync
from tests.test_callbacks import TRIGGER_ONLY

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_worker_prunes_beyond_the_retention_max(tmp_path: Path, database: str) -> None:
    pg = postgres_database_sync() if database == "postgres" else contextlib.nullcontext(None)
    with pg as url:
        svc = RunningService(
            tmp_path,
            "inline",
            database_url=url,
            EXECUTION_RETENTION_MAX="2",
            RETENTION_INTERVAL_SECONDS="1",
        )
        try:
            svc.sql(
                'INSERT INTO workflow_executions (id, "workflowId", status, "createdAt")'
                " VALUES (?, ?, ?, ?)",
                "node-run",
                "wf",
                "completed",
                "2020-01-01T00:00:00.000Z",
            )
            ids = []
            for _ in range(5):
                r = svc.client.post("/api/workflows/execute", json={"workflow": TRIGGER_ONLY})
                assert r.status_code == 200, r.text
                ids.append(r.json()["executionId"])
                assert svc.wait(ids[-1])["status"] == "completed"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if svc.client.get(f"/api/executions/{ids[2]}").status_code == 404:
                    break
                time.sleep(0.2)
            for eid in ids[:3]:
                assert svc.client.get(f"/api/executions/{eid}").status_code == 404, eid
                for table in ("execution_logs", "execution_events"):
                    query = f'SELECT 1 FROM {table} WHERE "executionId" = ?'
                    assert svc.sql(query, eid) == [], (table, eid)
            for eid in ids[3:]:
                assert svc.client.get(f"/api/executions/{eid}").status_code == 200, eid
            assert svc.sql("SELECT id FROM workflow_executions WHERE id = ?", "node-run")
        finally:
            svc.stop()
