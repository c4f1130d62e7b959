"""Issue 9: node configs holding passwords or tokens never reach Prefect. A prefect-mode run whose
nodes carry distinctive secrets (URL user-info and token, mysql, SMTP and Twilio passwords, the
service's OpenAI key), each node failing so its error paths run, with servers that echo the
credentials they receive; then everything Prefect holds is read back: the flow run and its
parameters, the task runs (names, task_inputs, state messages), the logs, and every byte under
PREFECT_HOME (its database with the events, results)."""

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import MockServer, RunningService, free_port

pytestmark = pytest.mark.slow

URL_PASSWORD = "SECRET-userinfo-4c1d"
URL_TOKEN = "SECRET-token-7f3a"
URL_API_KEY = "SECRET-apikey-0e9b"
MYSQL_PASSWORD = "SECRET-mysql-9d1e"
SMTP_PASSWORD = "SECRET-smtp-2b8c"
TWILIO_TOKEN = "SECRET-twilio-5e6f"
OPENAI_KEY = "SECRET-openai-8a0b"
PREFECT_AUTH = "SECRET-prefect-auth-3d2c-0123456789abcdef"
SECRETS = (
    URL_PASSWORD,
    URL_TOKEN,
    URL_API_KEY,
    MYSQL_PASSWORD,
    SMTP_PASSWORD,
    TWILIO_TOKEN,
    OPENAI_KEY,
)


def _credential(req: dict[str, Any]) -> str:
    """The password of a Basic, or the token of a Bearer, Authorization header ("" if none)."""
    scheme, _, value = str(req["headers"].get("authorization", "")).partition(" ")
    if scheme.lower() == "basic":
        return base64.b64decode(value).decode().partition(":")[2]
    return value


@pytest.fixture(scope="module")
def echo() -> Iterator[MockServer]:
    """Upstreams that answer errors quoting the request's URL and credentials back."""
    server = MockServer(
        {
            ("GET", "/fail"): lambda r: (500, {"path": r["path"], "auth": _credential(r)}),
            ("GET", "/ok"): lambda r: (200, {"fine": True}),
            ("POST", "/2010-04-01/Accounts/AC123/Messages.json"): lambda r: (
                401,
                {"code": 20003, "message": f"Authenticate ({_credential(r)} is wrong)"},
            ),
            ("POST", "/v1/chat/completions"): lambda r: (
                401,
                {
                    "error": {
                        "message": f"Incorrect API key provided: {_credential(r)}",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            ),
        }
    )
    yield server
    server.close()


def secret_workflow(port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    nodes: list[dict[str, Any]] = [
        {"id": "t", "type": "trigger", "label": "Start"},
        {
            "id": "h1",
            "type": "http",
            "label": "Fetch failing",
            "config": {
                "httpUrl": f"{base}/fail?token={URL_TOKEN}&page=2",
                "retries": 1,
                "retryDelayMs": 100,
            },
        },
        {
            "id": "h3",
            "type": "http",
            "label": "Fetch with login",
            "config": {
                "httpUrl": f"http://reader:{URL_PASSWORD}@127.0.0.1:{port}/fail",
                "retries": 0,
            },
        },
        {
            "id": "h2",
            "type": "http",
            "label": "Fetch ok",
            "config": {"httpUrl": f"{base}/ok?api_key={URL_API_KEY}"},
        },
        {
            "id": "m",
            "type": "mysql",
            "label": "Query",
            "config": {
                "mysqlHost": "127.0.0.1",
                "mysqlPort": "3306",
                "mysqlUsername": "root",
                "mysqlPassword": MYSQL_PASSWORD,
                "mysqlQuery": "SELECT 1",
                "retries": 0,
            },
        },
        {
            "id": "e",
            "type": "sendEmail",
            "label": "Mail",
            "config": {
                "emailTo": "ops@example.com",
                "emailSubject": "hi",
                "emailBody": "hello",
                "emailFrom": "wf@example.com",
                "emailSmtpHost": "127.0.0.1",
                "emailSmtpPort": str(free_port()),
                "emailSmtpUser": "mailer",
                "emailSmtpPass": SMTP_PASSWORD,
                "emailSecurity": "none",
                "retries": 0,
            },
        },
        {
            "id": "s",
            "type": "sendSMS",
            "label": "Text",
            "config": {
                "smsTo": "+15550001111",
                "smsBody": "hi",
                "twilioAccountSid": "AC123",
                "twilioAuthToken": TWILIO_TOKEN,
                "twilioFromNumber": "+15550002222",
                "retries": 0,
            },
        },
        {
            "id": "l",
            "type": "llm",
            "label": "Ask",
            "config": {"llmPrompt": "hello", "retries": 0},
        },
    ]
    return {
        "nodes": nodes,
        "connections": [{"fromNodeId": "t", "toNodeId": n["id"]} for n in nodes[1:]],
    }


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_no_node_secret_reaches_prefect(tmp_path: Path, echo: MockServer) -> None:
    svc = RunningService(
        tmp_path,
        "prefect",
        PREFECT_SERVER_API_AUTH_STRING=PREFECT_AUTH,
        OPENAI_API_KEY=OPENAI_KEY,
        OPENAI_BASE_URL=f"http://127.0.0.1:{echo.port}/v1",
        TWILIO_BASE_URL=f"http://127.0.0.1:{echo.port}",
    )
    try:
        assert svc.prefect_auth() == PREFECT_AUTH  # the operator's auth string is used...
        assert not (tmp_path / "prefect" / "ui-auth-string").exists()  # ...and not written
        svc.add_workflow("secrets", secret_workflow(echo.port), name="Secrets")
        eid = svc.execute("secrets", {})
        final = svc.wait(eid)
        assert final["mode"] == "prefect" and final["flowRunId"], final
        row = svc.row(eid)
        errors = {log["nodeId"]: log["error"] for log in row["logs"] if log["error"]}
        # every secret-carrying node failed but h2, so each error path ran with its secret
        assert set(errors) == {"h1", "h3", "m", "e", "s", "l"}, errors
        assert "***" in errors["h1"] and "***" in errors["l"], errors

        [flow_run] = svc.prefect_runs(eid)
        task_runs = svc.prefect_task_runs(flow_run["id"], 8)
        # Prefect logs a task failure with its traceback when its retries are exhausted (h1) or
        # it has none (the others: a failure its retry condition refuses would not be logged)
        logs = prefect_logs(svc, flow_run["id"], failed_tasks=6)
    finally:
        svc.stop()
    names = {t["name"]: t for t in task_runs}
    assert set(names) == {
        "Start",
        "Fetch failing",
        "Fetch with login",
        "Fetch ok",
        "Query",
        "Mail",
        "Text",
        "Ask",
    }
    assert flow_run["parameters"] == {"execution_id": eid, "workflow_id": "secrets"}
    failed = names["Fetch failing"]["state"]
    assert failed["type"] == "FAILED" and "***" in failed["message"], failed
    assert not any(any(t["task_inputs"].values()) for t in task_runs)  # no inputs recorded
    assert leaked(json.dumps(flow_run)) == []
    assert leaked(json.dumps(task_runs)) == []
    assert any("***" in log["message"] for log in logs), logs  # h1's error, scrubbed
    assert leaked(json.dumps(logs)) == []
    assert leaked(svc.log_text()) == []  # Prefect's console logs of the worker, and ours
    stored = b"".join(p.read_bytes() for p in (tmp_path / "prefect").rglob("*") if p.is_file())
    assert b"Fetch failing" in stored  # the scan sees Prefect's database
    assert [s for s in SECRETS if s.encode() in stored] == []


def prefect_logs(svc: RunningService, flow_run_id: str, failed_tasks: int) -> list[dict[str, Any]]:
    """The flow run's logs in Prefect, once the `failed_tasks` task-run failure logs arrived
    (logs are shipped in batches every 2 s)."""
    query = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    deadline = time.monotonic() + 30
    while True:
        r = httpx.post(
            f"{svc.prefect_url()}/logs/filter",
            json=query,
            headers=svc.prefect_headers(),
            timeout=10,
        )
        r.raise_for_status()
        logs: list[dict[str, Any]] = r.json()
        failures = [log for log in logs if "Task run failed" in log["message"]]
        if len(failures) >= failed_tasks or time.monotonic() > deadline:
            assert len(failures) >= failed_tasks, logs
            return logs
        time.sleep(0.5)
