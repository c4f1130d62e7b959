"""Versions through the real service (`./start.sh`, SQLite file shared as with the Node backend):
a published version that differs from the draft is what a trigger runs, and is recorded."""

import json
from pathlib import Path

import pytest

from tests.e2e import RunningService
from tests.test_versions import DRAFT, V1, expected_hash

pytestmark = pytest.mark.slow


def test_the_published_version_runs_and_is_recorded(tmp_path: Path) -> None:
    svc = RunningService(tmp_path, "inline")
    try:
        svc.add_workflow("wf_pub", DRAFT)
        svc.sql(
            'INSERT INTO workflow_versions (id, "workflowId", "organizationId", version, name, '
            'data, "createdAt", "isProduction") VALUES (?, ?, ?, ?, ?, ?, ?, 1)',
            "ver_1",
            "wf_pub",
            "org_test",
            1,
            "Live",
            json.dumps(V1, indent=2),
            "2026-01-01T00:00:00.000Z",
        )
        svc.sql('UPDATE workflows SET "publishedVersionId" = ? WHERE id = ?', "ver_1", "wf_pub")

        scheduled = svc.wait(svc.execute("wf_pub", {"_triggerType": "schedule"}))
        assert scheduled["status"] == "completed" and list(scheduled["nodeResults"]) == ["v1_node"]
        assert scheduled["workflowVersion"] == 1
        assert scheduled["workflowHash"] == expected_hash(V1)
        run = svc.row(scheduled["executionId"])["run"]
        assert (run["workflowVersion"], run["workflowHash"]) == (1, expected_hash(V1))

        manual = svc.wait(svc.execute("wf_pub", {"_triggerType": "manual"}))
        assert list(manual["nodeResults"]) == ["draft_node"]
        assert (manual["workflowVersion"], manual["workflowHash"]) == (None, expected_hash(DRAFT))

        history = svc.client.get("/api/workflows/wf_pub/executions").json()["executions"]
        assert sorted((e["workflowVersion"] or 0) for e in history) == [0, 1]
        listed = svc.client.get("/api/workflows/wf_pub/versions").json()["versions"]
        assert [(v["version"], v["published"], v["hash"]) for v in listed] == [
            (1, True, expected_hash(V1))
        ]
        diff = svc.client.get("/api/workflows/wf_pub/versions/diff?from=1&to=draft").json()
        assert diff["nodes"] == {"added": ["draft_node"], "removed": ["v1_node"], "changed": []}
    finally:
        svc.stop()
