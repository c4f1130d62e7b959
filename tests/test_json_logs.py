"""LOG_FORMAT=json: every line of every process of the real service is one JSON object with
timestamp, level, logger and message, and the lines about an execution carry its ids; the
formatter's mapping of the code's `extra` names, the context ids, warnings and exceptions."""

import asyncio
import io
import json
import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import logformat
from logformat import JsonFormatter, bind_log_context, log_context
from tests.e2e import MockServer, RunningService

REQUIRED = ("timestamp", "level", "logger", "message")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing JSON into a buffer (as a service process would to stderr); the
    hooks the formatter installs are taken back afterwards."""
    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook, logformat._hooked)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)
    sys.excepthook, threading.excepthook, sys.unraisablehook, logformat._hooked = hooks


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_the_keys_and_the_extra_ids(captured: io.StringIO) -> None:
    logging.getLogger("flows.runner").warning(
        "execution %s: %s", "e1", "why", extra={"execution_id": "e1", "action": "fallback"}
    )
    [line] = lines(captured)
    assert TIMESTAMP.match(line.pop("timestamp"))
    assert line == {
        "level": "WARNING",
        "logger": "flows.runner",
        "message": "execution e1: why",
        "executionId": "e1",
        "action": "fallback",
    }


async def test_the_context_tags_every_line_of_the_run_and_its_tasks(
    captured: io.StringIO,
) -> None:
    log = logging.getLogger("some.library")

    async def node() -> None:
        log.info("inside a node")

    with log_context(executionId="e2", organizationId="org_a", nodeId=None):
        bind_log_context(flowRunId="fr-1")
        with log_context(nodeId="n1"):
            task = asyncio.ensure_future(node())  # the task copies the context
        await task
        log.info("after the node")
    log.info("outside")
    inside, after, outside = lines(captured)
    ids = {"executionId": "e2", "organizationId": "org_a", "flowRunId": "fr-1"}
    assert {k: inside[k] for k in (*ids, "nodeId")} == {**ids, "nodeId": "n1"}
    assert {k: after.get(k) for k in ids} == ids and "nodeId" not in after
    assert not set(outside) & {"executionId", "organizationId", "flowRunId", "nodeId"}


def test_an_explicit_extra_wins_over_the_context(captured: io.StringIO) -> None:
    with log_context(executionId="outer"):
        logging.getLogger("x").info("other", extra={"execution_id": "inner", "node_id": "n"})
    [line] = lines(captured)
    assert (line["executionId"], line["nodeId"]) == ("inner", "n")


def test_exceptions_and_warnings_become_json_lines(captured: io.StringIO) -> None:
    logformat.install_hooks()  # done by the formatter already; idempotent
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(False)  # pytest replaced showwarning for the test: hook again
        logging.captureWarnings(True)
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    failed, warned = lines(captured)
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exc_info"]
    assert warned["logger"] == "py.warnings" and "deprecated thing" in warned["message"]


def test_uncaught_exceptions_are_logged(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("nobody caught me")
    except RuntimeError as exc:
        logformat._uncaught(RuntimeError, exc, exc.__traceback__)
    [line] = lines(captured)
    assert line["level"] == "CRITICAL" and line["logger"] == "uncaught"
    assert "RuntimeError: nobody caught me" in line["exc_info"]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = MockServer({("GET", "/item"): lambda _: (200, {"v": 1})})
    yield server
    server.close()


@pytest.mark.slow
def test_every_line_of_the_service_is_json(tmp_path: Path, mock: MockServer) -> None:
    """Prefect mode (the embedded Prefect server, the API and a worker), one execution, a stop."""
    # the embedded Prefect server at INFO: its uvicorn access lines and Prefect's own appear
    svc = RunningService(
        tmp_path, "prefect", LOG_FORMAT="json", PREFECT_SERVER_LOGGING_LEVEL="INFO"
    )
    try:
        svc.add_workflow(
            "wf",
            {
                "nodes": [
                    {"id": "t", "type": "trigger"},
                    {
                        "id": "h",
                        "type": "http",
                        "config": {"httpUrl": f"http://127.0.0.1:{mock.port}/item"},
                    },
                    {
                        "id": "a",
                        "type": "addField",
                        "config": {"addFieldName": "x", "addFieldValue": "1"},
                    },
                ],
                "connections": [
                    {"fromNodeId": "t", "toNodeId": "h"},
                    {"fromNodeId": "h", "toNodeId": "a"},
                ],
            },
        )
        eid = svc.execute("wf", {})
        final = svc.wait(eid)
        assert final["status"] == "completed" and final["mode"] == "prefect"
        deadline = time.monotonic() + 30  # the flow run settles in Prefect after the row
        while f"execution {eid} completed" not in svc.log_text():
            assert time.monotonic() < deadline, svc.log_text()[-3000:]
            time.sleep(0.1)
    finally:
        svc.stop()
    text = svc.log_text()
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            value = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line[:300]}")
        assert isinstance(value, dict), line
        for key in REQUIRED:
            assert key in value, (key, line)
        assert TIMESTAMP.match(value["timestamp"]), line
        parsed.append(value)
    about = [v for v in parsed if eid in v["message"]]
    assert len(about) >= 2  # started and completed at least
    for value in about:
        assert value.get("executionId") == eid, value
    started = next(v for v in parsed if v["message"].startswith(f"execution {eid} started"))
    assert started["organizationId"] == "org_test"
    assert started["flowRunId"] == final["flowRunId"]
    loggers = {v["logger"] for v in parsed}
    assert {"start_service", "uvicorn.error", "uvicorn.access", "flows.runner"} <= loggers, loggers
    assert any(name.startswith("prefect.server") for name in loggers), loggers
    uvicorn = [v["message"] for v in parsed if v["logger"] == "uvicorn.error"]
    assert any(m.startswith("Finished server process") for m in uvicorn), uvicorn  # shutdown
    assert any("stopping" in v["message"] for v in parsed if v["logger"] == "start_service")
