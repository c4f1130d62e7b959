"""The shared HTTP client of the network nodes (tasks/context.py) against a real local server:
httpx's API on aiohttp's pool, errors named right, redirects followed, no cookies kept."""

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from errors import NodeExecutionError
from tasks.context import Resources, open_resources
from tests.conftest import CallNode, make_settings
from tests.e2e import free_port


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "cookie": request.headers.get("Cookie"),
                "authorization": request.headers.get("Authorization"),
                "body": json.loads(body) if body else None,
            }
        )
        response = web.json_response({"path": request.path})
        response.set_cookie("session", "secret-of-another-workflow")
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.json_response({})

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/moved", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.fixture
async def resources() -> AsyncIterator[Resources]:
    res = open_resources(make_settings())
    yield res
    await res.aclose()


async def test_post_json_redirects_and_no_cookies(
    call_node: CallNode, upstream: tuple[str, list[dict[str, Any]]], resources: Resources
) -> None:
    base, seen = upstream
    first = await call_node(
        "http", {"httpUrl": f"{base}/echo", "httpMethod": "POST"}, {"a": 1}, resources=resources
    )
    second = await call_node("http", {"httpUrl": f"{base}/moved"}, None, resources=resources)
    assert first["outputData"] == {"path": "/echo"} and first["statusCode"] == 200
    assert second["outputData"] == {"path": "/echo"}
    assert [(r["method"], r["body"]) for r in seen] == [("POST", {"a": 1}), ("GET", None)]
    assert [r["cookie"] for r in seen] == [None, None]  # the Set-Cookie of the first is dropped


async def test_refused_connection_is_not_called_a_timeout(
    call_node: CallNode, resources: Resources
) -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing-listens"
    with pytest.raises(NodeExecutionError) as info:
        await call_node("http", {"httpUrl": url}, None, resources=resources)
    assert info.value.retryable is True
    assert f"HTTP GET {url} failed: ConnectError" in str(info.value)


async def test_read_timeout_is_a_timeout(
    call_node: CallNode,
    upstream: tuple[str, list[dict[str, Any]]],
    resources: Resources,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tasks.http_request.REQUEST_TIMEOUT_S", 0.2)
    url = f"{upstream[0]}/slow"
    with pytest.raises(NodeExecutionError) as info:
        await call_node("http", {"httpUrl": url}, None, resources=resources)
    assert str(info.value) == f"HTTP GET {url} timed out: ReadTimeout"


async def test_credentials_in_the_url_become_basic_auth(
    call_node: CallNode, upstream: tuple[str, list[dict[str, Any]]], resources: Resources
) -> None:
    base, seen = upstream
    url = base.replace("http://", "http://user:p%40ss@") + "/echo"
    result = await call_node("http", {"httpUrl": url}, None, resources=resources)
    assert result["statusCode"] == 200
    token = base64.b64encode(b"user:p@ss").decode()
    assert seen[-1]["authorization"] == f"Basic {token}"
