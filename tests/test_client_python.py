"""Issue 12, the Python client (`clients/python/wos_client`): `Client` and `AsyncClient` against
the real service (`./start.sh`, inline mode, SQLite shared as with the Node backend; slow), its
generated models against the service's live `/openapi.json`, and its event-stream parser."""

import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from wos_client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Event,
    InvalidRequest,
    NotFound,
    StreamError,
    WaitTimeout,
)
from wos_client.events import parse_lines
from wos_client.models import ExecutionPublic, NodeRunFailed, NodeRunSucceeded
from wos_client.streaming import Reconnects

from tests.e2e import MockServer, RunningService, free_port
from tests.service_process import ROOT

WID = "wf_py_client"
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"python-client-test-secret-32byte").decode()
SLOW_S = 30.0
"""How long the mock endpoint of the slow workflow answers (it is cancelled well before)."""


def definition(marker: str) -> dict[str, Any]:
    """trigger -> addField (`marker`) -> output: the result says which definition ran."""
    nodes = [
        {"id": "t", "type": "trigger"},
        {"id": "a", "type": "addField", "config": {"addFieldName": "ran", "addFieldValue": marker}},
        {"id": "o", "type": "output"},
    ]
    links = [{"fromNodeId": "t", "toNodeId": "a"}, {"fromNodeId": "a", "toNodeId": "o"}]
    return {"nodes": nodes, "connections": links}


def slow(url: str) -> dict[str, Any]:
    nodes = [
        {"id": "t", "type": "trigger"},
        {"id": "h", "type": "http", "config": {"url": url, "method": "GET", "timeoutMs": 60000}},
    ]
    return {"nodes": nodes, "connections": [{"fromNodeId": "t", "toNodeId": "h"}]}


def seed_versions(svc: RunningService) -> None:
    """Versions 1 and 2 of WID (2 published, with one more node), as the Node backend writes."""
    v2 = definition("v2")
    v2["nodes"].append({"id": "extra", "type": "comment"})
    for number, data in ((1, definition("v1")), (2, v2)):
        svc.sql(
            'INSERT INTO workflow_versions (id, "workflowId", "organizationId", version, name, '
            'data, "createdByName", "createdAt") VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
            f"{WID}_v{number}",
            WID,
            "org_test",
            number,
            f"Version {number}",
            json.dumps(data),
            "Ana",
            f"2026-01-0{number}T00:00:00.000Z",
        )
    svc.sql('UPDATE workflows SET "publishedVersionId" = ? WHERE id = ?', f"{WID}_v2", WID)


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = MockServer(
        {("GET", "/slow"): lambda _: (200, SLOW_S), ("POST", "/hook"): lambda _: (200, {})}
    )
    yield server
    server.close()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, mock: MockServer) -> Iterator[RunningService]:
    service = RunningService(
        tmp_path_factory.mktemp("pyclient"), "inline", CALLBACK_SECRET=CALLBACK_SECRET
    )
    try:
        service.add_workflow(WID, definition("draft"), "Python client")
        service.add_workflow("wf_py_slow", slow(f"http://127.0.0.1:{mock.port}/slow"), "Slow")
        yield service
    finally:
        service.stop()
        service.client.close()


def paths(svc: RunningService) -> dict[str, Any]:
    spec: dict[str, Any] = svc.client.get("/openapi.json").json()
    return spec


@pytest.mark.slow
def test_client_models_match_the_live_openapi_document(svc: RunningService) -> None:
    import generate_models

    rendered = generate_models.render(paths(svc))
    committed = (ROOT / "clients/python/wos_client/models.py").read_text()
    assert rendered == committed, (
        "clients/python/wos_client/models.py is not what the service's /openapi.json gives: "
        "run `.venv/bin/python clients/python/generate_models.py`"
    )


@pytest.mark.slow
def test_client_execute_wait_and_read_the_result(svc: RunningService) -> None:
    with Client(svc.url) as wos:
        assert wos.health().status == "running"
        submitted = wos.execute(WID, {"name": "Ada"}, version="draft", idempotency_key="py-1")
        again = wos.execute(WID, {"name": "Ada"}, version="draft", idempotency_key="py-1")
        assert again.executionId == submitted.executionId
        done = wos.wait(submitted.executionId, timeout=60)
        assert isinstance(done, ExecutionPublic)
        assert done.status == "completed" and done.progress.percentage == 100
        assert done.nodeResults["a"]["outputData"]["ran"] == "draft"
        assert done.inputs == {"name": "Ada"}
        logs = wos.logs(submitted.executionId)
        assert {row.nodeId for row in logs.logs} >= {"t", "a", "o"}
        history = wos.history(WID)
        assert submitted.executionId in [e.id for e in history.executions]
        page = wos.executions(workflow_id=WID, limit=5)
        assert submitted.executionId in [e.executionId for e in page.executions]
        graph = wos.graph(submitted.executionId)
        assert [n.id for n in graph.nodes] == ["t", "a", "o"]


@pytest.mark.slow
def test_client_execute_with_a_callback(svc: RunningService, mock: MockServer) -> None:
    hook = f"http://127.0.0.1:{mock.port}/hook"
    with Client(svc.url) as wos:
        eid = wos.execute(WID, callback=hook).executionId
        wos.wait(eid, timeout=60)
        deadline = time.monotonic() + 30
        while not mock.calls("POST", "/hook") and time.monotonic() < deadline:
            time.sleep(0.1)
        delivered = json.loads(mock.calls("POST", "/hook")[0]["body"])
        assert (delivered["executionId"], delivered["type"]) == (eid, "execution.completed")
        callbacks = wos.get(eid).callbacks
        assert [(c.url, c.event) for c in callbacks] == [(hook, "execution.completed")]
        with pytest.raises(InvalidRequest) as refused:
            wos.execute(WID, callback={"url": hook, "events": ["no.such.event"]})
        assert "no.such.event" in refused.value.detail


@pytest.mark.slow
def test_client_errors_carry_status_code_and_detail(svc: RunningService) -> None:
    with Client(svc.url) as wos:
        with pytest.raises(NotFound) as missing:
            wos.get("no-such-execution")
        assert missing.value.status_code == 404 and "no-such-execution" in missing.value.detail
        with pytest.raises(InvalidRequest) as invalid:
            wos.execute()  # neither a workflowId nor a workflow
        assert invalid.value.status_code == 422 and invalid.value.detail
        with pytest.raises(NotFound):
            wos.execute("wf_unknown")
        done = wos.wait(wos.execute(WID).executionId, timeout=60)
        with pytest.raises(Conflict) as conflict:
            wos.retry(done.executionId)  # a completed execution is not retried
        assert conflict.value.status_code == 409
    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as nowhere:
        with pytest.raises(ConnectionFailed):
            nowhere.get("x")


@pytest.mark.slow
def test_client_run_node_answers_success_and_failure(svc: RunningService) -> None:
    with Client(svc.url) as wos:
        node = {"config": {"addFieldName": "x", "addFieldValue": "1"}}
        ran = wos.run_node("n1", "addField", node, {"a": 1})
        assert isinstance(ran, NodeRunSucceeded) and ran.output["outputData"] == {"a": 1, "x": "1"}
        failed = wos.run_node("n2", "noSuchType", {})
        assert isinstance(failed, NodeRunFailed) and failed.error


@pytest.mark.slow
def test_client_cancel_retry_and_wait_timeout(svc: RunningService) -> None:
    with Client(svc.url) as wos:
        submitted = wos.execute("wf_py_slow")
        with pytest.raises(WaitTimeout):
            wos.wait(submitted.executionId, timeout=1)
        cancelled = wos.cancel(submitted.executionId)
        assert cancelled.success
        ended = wos.wait(submitted.executionId, timeout=60)
        assert ended.status == "cancelled"
        retried = wos.retry(submitted.executionId, from_scratch=True)
        assert retried.retryOf == submitted.executionId
        wos.cancel(retried.executionId)
        assert wos.wait(retried.executionId, timeout=60).status == "cancelled"


class CutOnce(httpx.HTTPTransport):
    """The real connection, but the first event stream is cut after its first event (as a
    proxy or a network drop would); records every stream request's headers."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[httpx.Headers] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.streams.append(request.headers)
        if len(self.streams) > 1:
            return response
        assert isinstance(response.stream, httpx.SyncByteStream)
        upstream: httpx.SyncByteStream = response.stream

        class Cut(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                buffered = b""
                for chunk in upstream:
                    buffered += chunk
                    if b"\n\n" in buffered:
                        yield buffered.split(b"\n\n", 1)[0] + b"\n\n"
                        raise httpx.RemoteProtocolError("connection cut", request=request)

            def close(self) -> None:
                upstream.close()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Cut(), request=request
        )


class AsyncCutOnce(httpx.AsyncHTTPTransport):
    """`CutOnce` for the async client."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[httpx.Headers] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.streams.append(request.headers)
        if len(self.streams) > 1:
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        upstream: httpx.AsyncByteStream = response.stream

        class Cut(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                buffered = b""
                async for chunk in upstream:
                    buffered += chunk
                    if b"\n\n" in buffered:
                        yield buffered.split(b"\n\n", 1)[0] + b"\n\n"
                        raise httpx.RemoteProtocolError("connection cut", request=request)

            async def aclose(self) -> None:
                await upstream.aclose()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Cut(), request=request
        )


@pytest.mark.slow
def test_client_events_resume_after_a_disconnect(svc: RunningService) -> None:
    with Client(svc.url) as wos:
        eid = wos.execute(WID).executionId
        wos.wait(eid, timeout=60)
        whole = list(wos.events(eid))
    types = [e.type for e in whole]
    assert types[0] == "execution.queued" and types[-1] == "execution.completed"
    assert [e.id for e in whole] == sorted({e.id for e in whole})

    transport = CutOnce()
    with Client(http=httpx.Client(base_url=svc.url, transport=transport)) as cut:
        resumed = list(cut.events(eid))
        assert [e.id for e in resumed] == [e.id for e in whole]  # nothing lost or repeated
        assert "last-event-id" not in transport.streams[0]
        assert transport.streams[1]["last-event-id"] == str(whole[0].id)
        after = list(cut.events(eid, after=whole[1].id, types=["node.completed"]))
        assert after and all(e.type == "node.completed" and e.id > whole[1].id for e in after)


@pytest.mark.slow
async def test_async_client_events_resume_after_a_disconnect(svc: RunningService) -> None:
    async with AsyncClient(svc.url) as wos:
        eid = (await wos.execute(WID)).executionId
        await wos.wait(eid, timeout=60)
        whole = [e.id async for e in wos.events(eid)]
    transport = AsyncCutOnce()
    http = httpx.AsyncClient(base_url=svc.url, transport=transport)
    async with AsyncClient(http=http) as cut:
        assert [e.id async for e in cut.events(eid)] == whole
        assert transport.streams[1]["last-event-id"] == str(whole[0])
    await http.aclose()


@pytest.mark.slow
def test_client_events_of_every_execution_follow_live_runs(svc: RunningService) -> None:
    seen: list[Event] = []

    def listen() -> None:
        with Client(svc.url) as wos:
            for event in wos.events(workflow_id=WID, types=["execution.completed"]):
                seen.append(event)
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(1)  # the stream is live-only without `after`
    with Client(svc.url) as wos:
        eid = wos.execute(WID).executionId
    listener.join(60)
    assert [(e.executionId, e.type) for e in seen] == [(eid, "execution.completed")]


class NoStreams(httpx.HTTPTransport):
    """The real service, but event streams answer 404 (an older service, or a proxy that
    refuses them): `wait` must fall back to polling."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"detail": "Not Found"}, request=request)
        return super().handle_request(request)


@pytest.mark.slow
def test_client_wait_falls_back_to_polling(svc: RunningService) -> None:
    http = httpx.Client(base_url=svc.url, transport=NoStreams())
    with Client(http=http) as wos:
        eid = wos.execute(WID).executionId
        assert wos.wait(eid, timeout=60, poll_interval=0.1).status == "completed"
    http.close()


@pytest.mark.slow
def test_client_versions_and_diff(svc: RunningService) -> None:
    if "/api/workflows/{workflow_id}/versions" not in paths(svc)["paths"]:
        pytest.skip("the service has no version endpoints")
    seed_versions(svc)
    with Client(svc.url) as wos:
        listed = wos.versions(WID)
        assert [(v.version, v.published) for v in listed.versions] == [(2, True), (1, False)]
        one = wos.version(WID, 1)
        assert one.name == "Version 1" and [n["id"] for n in one.workflow["nodes"]] == [
            "t",
            "a",
            "o",
        ]
        diff = wos.diff(WID, 1, 2)
        assert diff.nodes.added == ["extra"] and [c.id for c in diff.nodes.changed] == ["a"]
        assert wos.diff(WID, "draft", 1).nodes.changed[0].keys == ["addFieldValue"]
        with pytest.raises(NotFound):
            wos.version(WID, 9)
        ran = wos.wait(wos.execute(WID, version=1).executionId, timeout=60)
        assert ran.workflowVersion == 1 and ran.nodeResults["a"]["outputData"]["ran"] == "v1"
        published = wos.wait(wos.execute(WID, version="published").executionId, timeout=60)
        assert published.workflowVersion == 2 and published.workflowHash == listed.versions[0].hash


@pytest.mark.slow
async def test_async_client_execute_wait_events_and_errors(svc: RunningService) -> None:
    async with AsyncClient(svc.url) as wos:
        submitted = await wos.execute(WID, {"n": 1}, version="draft", priority="high")
        done = await wos.wait(submitted.executionId, timeout=60)
        assert done.status == "completed" and done.nodeResults["a"]["outputData"]["ran"] == "draft"
        events = [e async for e in wos.events(submitted.executionId)]
        assert events[-1].type == "execution.completed" and events[-1].terminal
        assert (await wos.logs(submitted.executionId)).executionId == submitted.executionId
        assert submitted.executionId in [e.id for e in (await wos.history(WID)).executions]
        with pytest.raises(NotFound) as missing:
            await wos.get("nope")
        assert missing.value.status_code == 404 and missing.value.detail
        slow_run = await wos.execute("wf_py_slow")
        with pytest.raises(WaitTimeout):
            await wos.wait(slow_run.executionId, timeout=1)
        assert (await wos.cancel(slow_run.executionId)).success
        assert (await wos.wait(slow_run.executionId, timeout=60)).status == "cancelled"
        retried = await wos.retry(slow_run.executionId, from_scratch=True)
        await wos.cancel(retried.executionId)
        ran = await wos.run_node("n", "addField", {"config": {"addFieldName": "k"}}, {})
        assert isinstance(ran, NodeRunSucceeded)


def test_sse_parser_reads_frames_comments_and_multiline_data() -> None:
    lines = [
        ": ping",
        "",
        "id: 7",
        "event: node.completed",
        'data: {"type": "node.completed",',
        'data: "executionId": "e1", "nodeId": "a"}',
        "",
        "retry: 1000",
        "",
    ]
    items = list(parse_lines(iter(lines)))
    assert items[0] is None  # the heartbeat
    event = items[1]
    assert isinstance(event, Event) and len(items) == 2
    assert (event.id, event.type, event.executionId, event.nodeId) == (
        7,
        "node.completed",
        "e1",
        "a",
    )
    assert not event.terminal


def test_sse_parser_refuses_what_is_not_an_event() -> None:
    with pytest.raises(StreamError):
        list(parse_lines(iter(["data: not json", ""])))
    with pytest.raises(StreamError):
        list(parse_lines(iter(["data: " + "x" * 1024 * 1024])))  # over the bound, no blank line


def test_reconnects_back_off_and_give_up_after_the_limit() -> None:
    tries = Reconnects(limit=3)
    delays = []
    for _ in range(3):
        tries.failed(OSError("cut"))
        delays.append(tries.delay())
    assert delays == [0.25, 0.5, 1.0]
    with pytest.raises(ConnectionFailed):
        tries.failed(OSError("cut"))
    tries.reset()
    assert tries.delay() == 0.0
    tries.ended_cleanly(received=True)  # a connection that sent events is no failure
    assert tries.failures == 0
