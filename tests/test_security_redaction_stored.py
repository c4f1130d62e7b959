"""Issue 9, "Secrets stay out of every output": what the orchestrator itself stores and logs — the
`nodeResults`/`finalOutput` columns, the execution's `error`, log rows, its own failure logs and
Prefect's — carries no URL user-info or secret-looking query parameter. Values handed from node
to node are not changed."""

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from database import Store
from flows.engine import Job, execute
from flows.graph import build_plan, parse_workflow
from flows.runner import PrefectProbe, Runner
from states import Outcome
from tasks import registry
from tasks.basic import EmptyConfig
from tasks.context import Resources, RunContext
from tasks.redaction import install_log_redaction
from tasks.registry import envelope, node, rules_of
from tests.conftest import MakeResources, Service, make_settings
from tests.test_engine import MemoryRecorder, edge
from tests.test_security_limits import _queued

ROOT = Path(__file__).resolve().parent.parent
URL = "https://user:pw@h/x?token=abc&api_key=zz"
SECRETS = ("user:pw", "token=abc", "api_key=zz")


def assert_clean(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} in {text[:2000]}"


@pytest.fixture
def log_redaction() -> Iterator[None]:
    """The redacting LogRecord factory the worker and the API install, removed afterwards."""
    before = logging.getLogRecordFactory()
    install_log_redaction()
    yield
    logging.setLogRecordFactory(before)


@pytest.fixture
def leaky_nodes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Node types quoting URL: `leakyEcho` outputs it, `leakyFail` fails with it in its error,
    `leakySink` records the input it got (returned list)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    received: list[Any] = []

    @node("leakyEcho", config=EmptyConfig)
    async def echo(config: EmptyConfig, data: Any, ctx: RunContext) -> dict[str, Any]:
        return envelope(f"fetched {URL}", [{"url": URL, "note": f"see {URL}"}])

    @node("leakyFail", config=EmptyConfig)
    async def fail(config: EmptyConfig, data: Any, ctx: RunContext) -> dict[str, Any]:
        raise RuntimeError(f"GET {URL} answered 500")

    @node("leakySink", config=EmptyConfig)
    async def sink(config: EmptyConfig, data: Any, ctx: RunContext) -> dict[str, Any]:
        received.append(data)
        return envelope("ok", data)

    return received


LEAKY = {
    "nodes": [
        {"id": "echo", "type": "leakyEcho", "config": {}},
        {"id": "sink", "type": "leakySink", "config": {}},
        {"id": "fail", "type": "leakyFail", "config": {}},
    ],
    "connections": [edge("echo", "sink")],
}


async def test_stored_rows_status_and_logs_hold_no_url_secret(
    service: Service,
    leaky_nodes: list[Any],
    log_redaction: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await service.execute(workflow=LEAKY)
    assert r.status_code == 200, r.text
    eid = r.json()["executionId"]
    body = await service.wait(eid)
    assert body["status"] == "failed"
    assert "https://***@h/x?token=***&api_key=***" in body["error"]
    assert (
        body["nodeResults"]["echo"]["outputData"][0]["url"]
        == "https://***@h/x?token=***&api_key=***"
    )
    assert body["finalOutput"] == body["nodeResults"]
    assert_clean(json.dumps(body))
    logs = (await service.client.get(f"/api/executions/{eid}/logs")).json()
    assert {row["nodeId"] for row in logs["logs"]} >= {"echo", "sink", "fail"}
    assert_clean(json.dumps(logs))
    stored = await service.store.get_execution(eid)
    assert stored is not None
    assert_clean(json.dumps({k: stored[k] for k in ("nodeResults", "finalOutput", "error")}))
    assert_clean(json.dumps([dict(row) for row in await service.store.get_logs(eid)]))
    assert_clean(caplog.text)
    # what the next node was handed is the value itself
    assert leaky_nodes == [[{"url": URL, "note": f"see {URL}"}]]


async def test_engine_redacts_an_orchestrator_failure(
    resources: Resources, log_redaction: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A run_node that fails outside any handler (no NodeError): its error row, the result kept
    for `nodeResults`, the execution's error and the logged traceback are redacted."""

    async def broken(n: Any, data: Any, ctx: Any) -> dict[str, Any]:
        if n.id == "b":
            raise ValueError(f"lost connection to {URL}")
        return {"success": True, "message": URL, "outputData": {"u": URL}}

    workflow = {
        "nodes": [{"id": "a", "type": "step"}, {"id": "b", "type": "step"}],
        "connections": [edge("a", "b")],
    }
    plan = build_plan(parse_workflow(workflow), rules_of)
    recorder = MemoryRecorder()
    result = await execute(Job("e1", None, None, {}, plan, resources), recorder, broken)
    assert result.status == Outcome.FAILED
    assert result.error is not None and "https://***@h/x?token=***" in result.error
    assert_clean(result.error)
    assert_clean(result.node_results)
    assert_clean(json.dumps([r.__dict__ for r in recorder.rows], default=str))
    assert "ValueError" in caplog.text
    assert_clean(caplog.text)
    assert result.results["a"]["outputData"] == {"u": URL}  # in memory: unchanged


async def test_runner_redacts_a_crashed_run(
    store: Store,
    make_resources: MakeResources,
    log_redaction: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner's last line of defence (`_guarded`) stores and logs the crash redacted."""
    eid = await _queued(store)
    (claim,) = await store.claim("host:1:w", 1, 60)
    assert claim.execution_id == eid
    settings = make_settings(EXECUTION_MODE="inline")
    runner = Runner(settings, store, make_resources(), PrefectProbe(None))

    async def crashing() -> Outcome:
        await asyncio.sleep(0)
        try:
            raise OSError(f"cannot reach {URL}")
        except OSError as exc:
            raise RuntimeError(f"checkpoint failed after {URL}") from exc

    assert await runner._guarded(eid, crashing(), "host:1:w") == Outcome.FAILED
    row = await store.get_execution(eid)
    assert row is not None and row["status"] == "failed"
    assert (
        row["error"]
        == "RuntimeError: checkpoint failed after https://***@h/x?token=***&api_key=***"
    )
    assert "cannot reach" in caplog.text  # the chained cause is logged, redacted
    assert_clean(caplog.text)


def test_log_records_are_redacted_with_their_tracebacks(
    log_redaction: None, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("prefect.task_runs")
    try:
        try:
            raise ConnectionError(URL)
        except ConnectionError as exc:
            raise RuntimeError("node failed") from exc
    except RuntimeError:
        logger.error("Task run failed with exception: %r", RuntimeError(URL), exc_info=True)
    logger.warning("plain %s and %d", "text", 3)
    assert_clean(caplog.text)
    assert "ConnectionError: https://***@h/x?token=***&api_key=***" in caplog.text
    assert "plain text and 3" in caplog.text
    install_log_redaction()  # idempotent: still one wrapper
    assert logging.getLogRecordFactory().inner is not logging.getLogRecordFactory()  # type: ignore[attr-defined]


def test_the_worker_process_redacts_prefect_failure_logs() -> None:
    """A worker process (`python -m flows.worker` configures logging this way) prints Prefect's
    task-run failure line and its traceback without the secrets."""
    script = (
        "from start_service import configure_logging\n"
        "from tasks.redaction import install_log_redaction\n"
        "import logging\n"
        "configure_logging('INFO')\n"
        "from prefect.logging.configuration import setup_logging\n"
        "setup_logging()\n"  # Prefect's console handler and formatter on its run loggers
        "install_log_redaction()\n"
        "try:\n"
        f"    raise ConnectionError({URL!r})\n"
        "except ConnectionError as exc:\n"
        "    logging.getLogger('prefect.task_runs').error('failed: %s', exc, exc_info=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "failed: https://***@h/x?token=***&api_key=***" in done.stderr
    assert "ConnectionError: https://***@h" in done.stderr
    assert_clean(done.stderr)
