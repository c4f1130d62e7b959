"""The event streams over HTTP: SSE and WebSocket, history then live, resume, keys and org
scoping, filters, and a slow consumer. The app is served by a real uvicorn on a free port (the
ASGI test transport buffers whole answers), with the in-process worker of the `service`
fixture."""

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import api.event_stream
from api_service import app
from config import get_settings
from database import NewExecution
from database.interfaces import Event
from tests.conftest import Service
from tests.e2e import MockServer
from tests.service_process import free_port

KEYS = "ks,ka@org_a,kb@org_b"


@dataclass
class Live:
    """The in-process service, also served over TCP at `url`."""

    service: Service
    url: str

    @property
    def store(self) -> Any:
        return self.service.store

    def client(self, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=20, trust_env=False, headers=headers)


@pytest.fixture
async def live(service: Service) -> AsyncIterator[Live]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=5,  # a test that left a connection open cannot hang teardown
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield Live(service, f"http://127.0.0.1:{port}")
    app.state.events.end_streams()  # as a signal to the service does
    server.should_exit = True
    await serving


@pytest.fixture
def slow_http() -> AsyncIterator[MockServer]:
    server = MockServer({("GET", "/slow"): lambda _: (200, 0.3)})
    yield server
    server.close()


def chain(port: int | None = None) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": "t", "type": "trigger"}]
    if port is not None:
        nodes.append(
            {"id": "h", "type": "http", "config": {"httpUrl": f"http://127.0.0.1:{port}/slow"}}
        )
    nodes.append({"id": "o", "type": "output"})
    ids = [n["id"] for n in nodes]
    links = [{"fromNodeId": a, "toNodeId": b} for a, b in zip(ids, ids[1:], strict=False)]
    return {"nodes": nodes, "connections": links}


async def wait_done(live: Live, eid: str, key: str) -> None:
    for _ in range(500):
        r = await live.service.client.get(f"/api/executions/{eid}", headers={"X-API-Key": key})
        if r.json()["status"] in ("completed", "failed", "cancelled"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{eid} did not end")


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Frames as {id, event, data}; comments as {"comment": text}."""
    frames = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        frame: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                frame["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                frame[name] = json.loads(value) if name == "data" else value
        frames.append(frame)
    return frames


async def sse(client: httpx.AsyncClient, path: str, **kw: Any) -> list[dict[str, Any]]:
    """A whole (ending) stream."""
    async with client.stream("GET", path, **kw) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        return parse_sse((await r.aread()).decode())


def as_frames(events: list[Event]) -> list[dict[str, Any]]:
    return [{"id": str(e.id), "event": e.type, "data": json.loads(e.data)} for e in events]


async def submit(
    live: Live, workflow: dict[str, Any], org: str | None = None, **headers: str
) -> str:
    body: dict[str, Any] = {"workflow": workflow, "inputs": {}}
    if org is not None:
        body["organizationId"] = org
    r = await live.service.client.post("/api/workflows/execute", json=body, headers=headers)
    assert r.status_code == 200, r.text
    eid: str = r.json()["executionId"]
    return eid


async def test_an_execution_stream_is_history_then_live_and_ends(
    live: Live, slow_http: MockServer
) -> None:
    eid = await submit(live, chain(slow_http.port))
    async with live.client() as c:
        frames = await sse(c, f"/api/executions/{eid}/events")
    stored = await live.store.events_after(0, execution_id=eid)
    assert frames == as_frames(stored)
    assert frames[-1]["event"] == "execution.completed"
    status = (await live.service.client.get(f"/api/executions/{eid}")).json()
    for frame in frames:
        if frame["event"] == "node.completed":  # published after its result was committed
            assert frame["data"]["nodeId"] in status["nodeResults"]


async def test_a_stream_resumes_after_last_event_id(live: Live) -> None:
    eid = await submit(live, chain())
    await live.service.wait(eid)
    stored = as_frames(await live.store.events_after(0, execution_id=eid))
    path = f"/api/executions/{eid}/events"
    async with live.client() as c:
        assert await sse(c, path, headers={"Last-Event-ID": stored[2]["id"]}) == stored[3:]
        assert await sse(c, f"{path}?after={stored[1]['id']}") == stored[2:]
        header_wins = await sse(c, f"{path}?after=0", headers={"Last-Event-ID": stored[4]["id"]})
        assert header_wins == stored[5:]
        assert await sse(c, path, headers={"Last-Event-ID": stored[-1]["id"]}) == []
        r = await c.get(path, headers={"Last-Event-ID": "x1"})
        assert (r.status_code, r.json()) == (422, {"detail": r.json()["detail"]})


async def test_types_filter_and_unknown_types(live: Live) -> None:
    eid = await submit(live, chain())
    async with live.client() as c:
        frames = await sse(c, f"/api/executions/{eid}/events?types=node.completed")
        assert [f["data"]["nodeId"] for f in frames] == ["t", "o"]  # and it ended
        r = await c.get(f"/api/executions/{eid}/events?types=node.completed,bogus")
        assert r.status_code == 422 and "bogus" in r.json()["detail"]
        r = await c.get("/api/events?types=execution.done")
        assert r.status_code == 422 and "execution.done" in r.json()["detail"]


async def test_keys_and_org_scoping(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", KEYS)
    get_settings.cache_clear()
    mine = await submit(live, chain(), "org_a", **{"X-API-Key": "ka"})
    theirs = await submit(live, chain(), "org_b", **{"X-API-Key": "kb"})
    await wait_done(live, theirs, "ks")
    async with live.client() as c:
        for path in (f"/api/executions/{theirs}/events?api_key=ka", "/api/executions/no/events"):
            r = await c.get(path, headers={"X-API-Key": "ka"})
            assert r.status_code == 404 and r.json() == {"detail": r.json()["detail"]}
        r = await c.get(f"/api/executions/{mine}/events")
        assert r.status_code == 401 and "api_key" in r.json()["detail"]
        r = await c.get(f"/api/executions/{mine}/events?api_key=wrong")
        assert r.status_code == 401
        frames = await sse(c, f"/api/executions/{mine}/events?api_key=ka")
        assert frames[-1]["event"] == "execution.completed"
        frames = await sse(c, f"/api/executions/{theirs}/events?api_key=ks")
        assert frames[-1]["event"] == "execution.completed"
        r = await c.get("/api/events?organizationId=org_b&api_key=ka")
        assert r.status_code == 403


async def read_until(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    """The next `count` event frames of an open stream (comments skipped)."""
    frames: list[dict[str, Any]] = []
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        *blocks, buffer = buffer.split("\n\n")
        frames += [f for f in parse_sse("\n\n".join(blocks) + "\n\n") if "event" in f]
        if len(frames) >= count:
            return frames[:count]
    raise AssertionError(f"stream ended after {frames}")


async def test_the_global_stream_is_live_and_sees_only_what_the_key_may(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS", KEYS)
    get_settings.cache_clear()
    before = await submit(live, chain(), "org_a", **{"X-API-Key": "ka"})
    await wait_done(live, before, "ka")
    async with live.client() as c:
        org_a = c.stream("GET", "/api/events", headers={"X-API-Key": "ka"})
        svc_b = c.stream("GET", "/api/events?organizationId=org_b&api_key=ks")
        failed = c.stream("GET", "/api/events?types=execution.completed&api_key=ks")
        async with org_a as ra, svc_b as rb, failed as rc:
            await asyncio.sleep(0.2)  # subscribed
            a = await submit(live, chain(), "org_a", **{"X-API-Key": "ka"})
            b = await submit(live, chain(), "org_b", **{"X-API-Key": "kb"})
            got_a, got_b, got_c = await asyncio.wait_for(
                asyncio.gather(read_until(ra, 7), read_until(rb, 7), read_until(rc, 2)), 20
            )
    assert {f["data"]["executionId"] for f in got_a} == {a}
    assert {f["data"]["executionId"] for f in got_b} == {b}
    assert [f["event"] for f in got_a][0] == "execution.queued"
    assert {(f["event"], f["data"]["executionId"]) for f in got_c} == {
        ("execution.completed", a),
        ("execution.completed", b),
    }


async def test_websocket_streams(live: Live) -> None:
    eid = await submit(live, chain())
    await live.service.wait(eid)
    stored = [json.loads(e.data) for e in await live.store.events_after(0, execution_id=eid)]
    ws_url = live.url.replace("http", "ws")
    async with ws_connect(f"{ws_url}/api/executions/{eid}/ws?after={stored[0]['id']}") as ws:
        got = [json.loads(m) async for m in ws]
        assert ws.close_code == 1000
    assert got == stored[1:]
    async with ws_connect(f"{ws_url}/api/executions/nope/ws") as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4404
    async with ws_connect(f"{ws_url}/api/ws?types=bogus") as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4422
    async with ws_connect(f"{ws_url}/api/ws") as ws:
        await asyncio.sleep(0.2)
        other = await submit(live, chain())
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert (first["executionId"], first["type"]) == (other, "execution.queued")


async def test_websocket_keys(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", KEYS)
    get_settings.cache_clear()
    ws_url = live.url.replace("http", "ws")
    async with ws_connect(f"{ws_url}/api/ws?api_key=wrong") as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4401
    async with ws_connect(f"{ws_url}/api/ws?organizationId=org_b&api_key=ka") as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4403


async def test_heartbeats_while_idle(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.event_stream, "HEARTBEAT_S", 0.1)
    async with live.client() as c, c.stream("GET", "/api/events") as r:
        text = ""
        async for chunk in r.aiter_text():
            text += chunk
            if text.count(": ping\n\n") >= 2:
                break
    assert text.startswith(": ping\n\n")


def new(eid: str) -> NewExecution:
    return NewExecution(eid, "wf", "WF", None, {"pad": "x" * 10}, '{"nodes": []}', "inline")


async def test_a_slow_consumer_is_disconnected_with_bounded_memory_and_resumes(
    live: Live,
) -> None:
    """A client that never reads: its queue fills, the server drops the connection, nothing
    of it stays in the hub, and it resumes after the last id it got without a gap."""
    hub = app.state.events
    hub.queue_max = 50
    port = int(live.url.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: test\r\n\r\n")
    await asyncio.sleep(0.3)  # subscribed
    assert hub.subscribers == 1
    total = 0
    while hub.subscribers and total < 20_000:
        await asyncio.gather(
            *(live.store.create_execution(new(f"s{total + i}")) for i in range(200))
        )
        total += 200
        await asyncio.sleep(0.06)  # a poll tick
    assert hub.subscribers == 0, "the slow consumer was never disconnected"
    sock.setblocking(False)
    received = b""
    loop = asyncio.get_running_loop()
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 10):
        received += chunk  # what was already on its way, then the server's close
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    got = [int(f["id"]) for f in parse_sse(_dechunk(body)) if "id" in f]
    everything = [e.id for e in await live.store.events_after(0, limit=total + 10)]
    assert got == everything[: len(got)] and len(got) < len(everything)
    async with live.client() as c:
        r = c.stream("GET", "/api/events", headers={"Last-Event-ID": str(got[-1])})
        async with r as resumed:
            rest = await asyncio.wait_for(read_until(resumed, len(everything) - len(got)), 30)
    assert [int(f["id"]) for f in rest] == everything[len(got) :]


def _dechunk(body: bytes) -> str:
    """An HTTP/1.1 chunked body, as far as it got."""
    out, rest = b"", body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep or not size_line.strip():
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0 or len(rest) < size:
            out += rest[:size]
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out.decode(errors="replace")


async def test_a_slow_websocket_consumer_is_closed_with_the_id_to_resume_after(
    live: Live,
) -> None:
    hub = app.state.events
    hub.queue_max = 50
    ws_url = live.url.replace("http", "ws")
    async with ws_connect(f"{ws_url}/api/ws", max_queue=1, max_size=None) as ws:
        ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await asyncio.sleep(0.3)
        total = 0
        while hub.subscribers and total < 20_000:
            batch = [live.store.create_execution(new(f"w{total + i}")) for i in range(200)]
            await asyncio.gather(*batch)
            total += 200
            await asyncio.sleep(0.06)
        assert hub.subscribers == 0, "the slow consumer was never disconnected"
        got: list[int] = []
        with pytest.raises(ConnectionClosed):
            while True:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["id"])
        assert ws.close_code == 1008
        assert ws.close_reason == f"Slow consumer disconnected; resume after event {got[-1]}"
    everything = [e.id for e in await live.store.events_after(got[0] - 1, limit=len(got))]
    assert got == everything
