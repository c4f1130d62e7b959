"""Issue 12, the Node.js client (`clients/node/`): its `node:test` suite run against the real
service (`./start.sh`, inline mode) that this test starts and seeds (a workflow with a draft and
two versions, one published). Without `node` (>= 18) the test is skipped with a message; under
CI=true it fails."""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import RunningService
from tests.service_process import ROOT

pytestmark = pytest.mark.slow
CLIENT = ROOT / "clients" / "node"
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"node-client-test-secret-32-bytes").decode()


def definition(marker: str) -> dict[str, Any]:
    """trigger -> addField (`marker`) -> output: the result says which definition ran."""
    nodes = [
        {"id": "t", "type": "trigger"},
        {"id": "a", "type": "addField", "config": {"addFieldName": "ran", "addFieldValue": marker}},
        {"id": "o", "type": "output"},
    ]
    links = [{"fromNodeId": "t", "toNodeId": "a"}, {"fromNodeId": "a", "toNodeId": "o"}]
    return {"nodes": nodes, "connections": links}


def seed(svc: RunningService) -> dict[str, str]:
    """The workflow `wf_node_client` of org_test: a draft, version 1 and version 2 (published,
    with a changed addField and one more node); returns what the Node tests read from env."""
    wid = "wf_node_client"
    svc.add_workflow(wid, definition("draft"), name="Node client")
    v2 = definition("v2")
    v2["nodes"].append({"id": "extra", "type": "comment"})
    for number, data in ((1, definition("v1")), (2, v2)):
        svc.sql(
            'INSERT INTO workflow_versions (id, "workflowId", "organizationId", version, name, '
            'data, description, "createdByName", "createdAt") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
            f"{wid}_v{number}",
            wid,
            "org_test",
            number,
            f"Version {number}",
            json.dumps(data),
            f"the version {number}",
            "Ana",
            f"2026-01-0{number}T00:00:00.000Z",
        )
    svc.sql('UPDATE workflows SET "publishedVersionId" = ? WHERE id = ?', f"{wid}_v2", wid)
    return {
        "WOS_BASE_URL": svc.url,
        "WOS_WORKFLOW_ID": wid,
        "WOS_ORGANIZATION_ID": "org_test",
        "WOS_CALLBACK_SECRET": CALLBACK_SECRET,
    }


def node_binary() -> str:
    """`node` >= 18, or a skip (a failure under CI) naming what is missing."""
    node = shutil.which("node")
    problem = "node is not installed" if node is None else None
    if node is not None:
        version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
        found = re.match(r"v(\d+)\.", version)
        if found is None or int(found.group(1)) < 18:
            problem = f"node >= 18 is needed (found {version.strip() or 'nothing'})"
    if problem is None and node is not None:
        return node
    message = f"{problem}: the Node.js client's tests need it"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (required under CI)")
    pytest.skip(message)


def test_node_client_suite_against_the_real_service(tmp_path: Path) -> None:
    node = node_binary()
    svc = RunningService(tmp_path, "inline", CALLBACK_SECRET=CALLBACK_SECRET)
    try:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "NO_COLOR": "1",
            **seed(svc),
        }
        result = subprocess.run(
            [node, "--test", "--test-reporter=spec", str(CLIENT / "test")],
            cwd=CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        svc.stop()
    report = result.stdout + result.stderr
    print(report)  # noqa: T201 (pytest shows it on failure and with -s)
    assert result.returncode == 0, report[-6000:]
    assert re.search(r"# fail 0\b|ℹ fail 0\b", report), report[-3000:]
