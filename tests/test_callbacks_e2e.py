"""Callbacks of the real service (`./start.sh`): a delivery still pending when the service is
SIGKILLed is sent after the restart, at once, with the same webhook-id and a valid signature."""

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.e2e import RunningService
from tests.support import postgres_database_sync
from tests.test_callbacks import SECRET, TRIGGER_ONLY, Receiver

pytestmark = pytest.mark.slow

SETTINGS = {"CALLBACK_SECRET": SECRET, "CALLBACK_RETRY_BASE_SECONDS": "0.5"}


def callbacks_of(svc: RunningService, eid: str) -> list[dict[str, Any]]:
    callbacks: list[dict[str, Any]] = svc.client.get(f"/api/executions/{eid}").json()["callbacks"]
    return callbacks


def wait_until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_pending_callback_is_delivered_after_a_sigkill_and_restart(
    tmp_path: Path, database: str
) -> None:
    receiver = Receiver(503)
    with contextlib.ExitStack() as stack:
        stack.callback(receiver.close)
        url = stack.enter_context(postgres_database_sync()) if database == "postgres" else None
        hook = f"http://127.0.0.1:{receiver.port}/hook"
        svc = RunningService(tmp_path, "inline", database_url=url, **SETTINGS)
        try:
            r = svc.client.post(
                "/api/workflows/execute", json={"workflow": TRIGGER_ONLY, "callback": {"url": hook}}
            )
            assert r.status_code == 200, r.text
            eid = r.json()["executionId"]
            assert svc.wait(eid)["status"] == "completed"
            wait_until(lambda: len(receiver.arrived) >= 2, "two refused attempts")
            [before] = wait_until(
                lambda: [c for c in callbacks_of(svc, eid) if c["attempts"] >= 2], "2 attempts"
            )
        finally:
            svc.stop(signal.SIGKILL)
        assert before["status"] == "pending" and before["lastError"].startswith("HTTP 503")
        refused = len(receiver.arrived)
        receiver.script = [200]
        time.sleep(3)  # the next attempt falls due while the service is down

        again = RunningService(
            tmp_path, "inline", database_url=url, API_PORT=str(svc.port), **SETTINGS
        )
        ready = time.monotonic()
        try:
            [after] = wait_until(
                lambda: [c for c in callbacks_of(again, eid) if c["status"] == "delivered"],
                "the delivery after the restart",
            )
        finally:
            again.stop()
    requests = receiver.calls("POST", "/hook")
    assert len(requests) == refused + 1  # refused ones, then exactly one accepted
    assert receiver.arrived[-1] - ready < 5  # overdue: sent at once, not after a backoff
    assert {req["headers"]["webhook-id"] for req in requests} == {before["webhookId"]}
    event = Webhook(SECRET).verify(requests[-1]["body"], requests[-1]["headers"])
    assert event["type"] == "execution.completed" and event["executionId"] == eid
    assert after["webhookId"] == before["webhookId"] and after["attempts"] == refused + 1
    assert after["lastError"] is None and after["deliveredAt"]
