"""The Prefect UI of the embedded server: its URL and port, its auth string, `prefectUrl`, task
runs named after the nodes' labels, and a clear start-up error when its port is taken."""

import base64
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.executions import prefect_url
from config import Settings
from tests.service_process import ROOT, free_port, scrubbed_env, stop_group
from tests.support import node_backend_sqlite

LABELLED = {
    "nodes": [
        {"id": "t", "type": "trigger", "label": "Start"},
        {
            "id": "c",
            "type": "condition",
            "label": "No n given?",
            "config": {"conditionField": "n", "conditionOperator": "isEmpty"},
        },
        {
            "id": "a",
            "type": "addField",
            "label": "Mark it",
            "config": {"addFieldName": "marked", "addFieldValue": "yes"},
        },
        {"id": "o", "type": "output"},
    ],
    "connections": [
        {"fromNodeId": "t", "toNodeId": "c"},
        {"fromNodeId": "c", "toNodeId": "a", "outputType": "true"},
        {"fromNodeId": "a", "toNodeId": "o"},
    ],
}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "http://127.0.0.1:4200"),
        ({"API_HOST": "10.1.2.3", "PREFECT_SERVER_API_PORT": 4300}, "http://10.1.2.3:4300"),
        ({"API_HOST": "::1"}, "http://[::1]:4200"),
        ({"API_HOST": "0.0.0.0"}, f"http://{socket.gethostname()}:4200"),
        ({"PREFECT_API_URL": "http://prefect.internal:4200/api/"}, "http://prefect.internal:4200"),
        (
            {
                "PREFECT_UI_URL": "https://ops.example.com/prefect/",
                "PREFECT_API_URL": "http://x/api",
            },
            "https://ops.example.com/prefect",
        ),
    ],
)
def test_prefect_ui_url_defaults_to_the_embedded_server(
    values: dict[str, Any], expected: str
) -> None:
    assert settings(**values).prefect_ui_url == expected


def test_every_node_is_a_task_run_by_default() -> None:
    assert settings().PREFECT_TASK_NODES == "all"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"mode": "prefect", "flowRunId": "f-1"}, "http://127.0.0.1:4200/runs/flow-run/f-1"),
        ({"mode": "inline", "flowRunId": None}, None),
        ({"mode": "prefect", "flowRunId": None}, None),  # not started yet
        ({"mode": None, "flowRunId": None}, None),  # a row the Node backend wrote
    ],
)
def test_prefect_url_only_for_executions_that_ran_in_prefect(
    row: dict[str, Any], expected: str | None
) -> None:
    assert prefect_url(row) == expected


def test_a_taken_prefect_port_is_a_clear_start_up_error(tmp_path: Path) -> None:
    """Start-up fails within seconds with exit status 1 naming the setting; no worker or API."""
    db = tmp_path / "db.sqlite"
    node_backend_sqlite(db)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = scrubbed_env(
            API_PORT=str(free_port()),
            PREFECT_SERVER_API_PORT=str(port),
            DATABASE_PATH=str(db),
            PREFECT_HOME=str(tmp_path / "prefect"),
            EXECUTION_MODE="prefect",
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "start_service.py"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            stop_group(proc, timeout=5)
    text = out.decode(errors="replace")
    assert proc.returncode == 1, text
    assert time.monotonic() - started < 60
    assert f"PREFECT_SERVER_API_PORT {port} on 127.0.0.1 is already in use" in text
    assert "started worker" not in text and "started api" not in text, text


def test_the_prefect_port_may_not_be_the_api_port(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    node_backend_sqlite(db)
    port = str(free_port())
    env = scrubbed_env(
        API_PORT=port,
        PREFECT_SERVER_API_PORT=port,
        DATABASE_PATH=str(db),
        PREFECT_HOME=str(tmp_path / "prefect"),
        EXECUTION_MODE="prefect",
    )
    done = subprocess.run(
        [sys.executable, "start_service.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert done.returncode == 1, done.stderr
    assert f"PREFECT_SERVER_API_PORT and API_PORT are both {port}" in done.stderr


@pytest.mark.slow
def test_prefect_ui_serves_flow_runs_with_labelled_task_runs(prefect_service: Any) -> None:
    """The UI on PREFECT_SERVER_API_PORT: the start-up log names its URL and the file holding
    the generated auth string; the API needs that string (as the UI's login sends it); the
    execution's `prefectUrl` is its flow run's page; each node (PREFECT_TASK_NODES=all, the
    default) is a task run named after its label."""
    svc = prefect_service
    ui = f"http://127.0.0.1:{svc.prefect_port}"
    auth_file = svc.workdir / "prefect" / "ui-auth-string"
    assert f"Prefect UI at {ui} (log in with the auth string: {auth_file})" in svc.log_text()
    auth = auth_file.read_text().strip()
    assert auth == svc.prefect_auth() and len(auth) >= 32
    assert auth_file.stat().st_mode & 0o077 == 0, "readable by its owner only"
    assert auth not in svc.log_text()

    page = httpx.get(f"{ui}/", headers={"Accept": "text/html"}, follow_redirects=True)
    assert page.status_code == 200 and "<html" in page.text.lower()
    ui_settings = httpx.get(f"{ui}/ui-settings").json()
    assert ui_settings["auth"] == "BASIC" and ui_settings["api_url"] == f"{ui}/api"
    login = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    assert httpx.get(f"{ui}/api/admin/version").status_code == 401
    assert httpx.get(f"{ui}/api/admin/version", headers=login).status_code == 200

    svc.add_workflow("wf_labelled", LABELLED)
    eid = svc.execute("wf_labelled", {})
    final = svc.wait(eid)
    assert final["status"] == "completed" and final["mode"] == "prefect", final
    assert final["prefectUrl"] == f"{ui}/runs/flow-run/{final['flowRunId']}"
    run_page = httpx.get(final["prefectUrl"], headers={"Accept": "text/html"})
    assert run_page.status_code == 200 and "<html" in run_page.text.lower()
    tasks = svc.prefect_task_runs(final["flowRunId"], 4)
    assert [(t["name"], t["state"]["type"]) for t in tasks] == [
        ("Start", "COMPLETED"),
        ("No n given?", "COMPLETED"),
        ("Mark it", "COMPLETED"),
        ("output:o", "COMPLETED"),  # no label: type:id
    ]
