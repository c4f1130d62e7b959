"""http handler (contract §4.4, fixtures 03 and 08) on an httpx.MockTransport — no network."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from errors import NodeConfigError, NodeExecutionError
from models import NodeDef
from tasks import get_spec
from tasks.run_node import run_with_retries
from tests.conftest import CallNode, MakeCtx, MakeResources

URL = "http://api.test/api/sensors"
SENSORS = [{"sensor": "S1", "value": 42}, {"sensor": "S2", "value": 77}]


class Recorder:
    """A MockTransport handler that records every request and answers with `reply(request)`."""

    def __init__(self, reply: Callable[[httpx.Request], httpx.Response]) -> None:
        self.reply = reply
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.reply(request)


def answer(status: int = 200, **kwargs: Any) -> Recorder:
    return Recorder(lambda request: httpx.Response(status, **kwargs))


@pytest.fixture
def http_call(call_node: CallNode, make_resources: MakeResources) -> Callable[..., Any]:
    async def call(recorder: Recorder, config: dict[str, Any], data: Any = None) -> Any:
        return await call_node("http", config, data, resources=make_resources(recorder))

    return call


async def test_http_get_parses_json(http_call: Callable[..., Any]) -> None:
    recorder = answer(200, json=SENSORS)
    result = await http_call(recorder, {"httpUrl": URL}, {"ignored": "no body for GET"})
    assert result["outputData"] == SENSORS
    assert result["statusCode"] == 200
    assert result["message"] == f"HTTP GET {URL} - Status 200"
    [request] = recorder.requests
    assert (request.method, str(request.url), request.content) == ("GET", URL, b"")


@pytest.mark.parametrize(
    ("method", "data", "body"),
    [
        ("POST", SENSORS, SENSORS),
        ("POST", [], []),
        ("POST", None, {}),
        ("post", {"a": 1}, {"a": 1}),
        ("PUT", {"a": 1}, {"a": 1}),
        ("PATCH", "text", "text"),
    ],
)
async def test_http_sends_input_as_json_body(
    http_call: Callable[..., Any], method: str, data: Any, body: Any
) -> None:
    recorder = answer(201, json={"received": 2})
    result = await http_call(recorder, {"httpUrl": URL, "httpMethod": method}, data)
    assert result["outputData"] == {"received": 2}
    assert result["statusCode"] == 201
    [request] = recorder.requests
    assert request.method == method.upper()
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == body


@pytest.mark.parametrize("method", ["DELETE", "HEAD", "GET"])
async def test_http_methods_without_body(http_call: Callable[..., Any], method: str) -> None:
    recorder = answer(204)
    result = await http_call(recorder, {"url": URL, "method": method}, {"a": 1})
    assert recorder.requests[0].method == method
    assert recorder.requests[0].content == b""
    assert result["outputData"] == {"response": ""}


async def test_http_editor_keys_win_over_ai_aliases(http_call: Callable[..., Any]) -> None:
    recorder = answer(200, json={})
    config = {"httpUrl": URL, "url": "http://other.test/", "httpMethod": "PUT", "method": "GET"}
    await http_call(recorder, config)
    assert (recorder.requests[0].method, str(recorder.requests[0].url)) == ("PUT", URL)


async def test_http_non_json_body(http_call: Callable[..., Any]) -> None:
    recorder = answer(200, text="<html>ok</html>", headers={"content-type": "text/html"})
    result = await http_call(recorder, {"httpUrl": URL})
    assert result["outputData"] == {"response": "<html>ok</html>"}


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (404, False), (400, False), (302, False)],
)
async def test_http_error_status(
    http_call: Callable[..., Any], status: int, retryable: bool
) -> None:
    recorder = answer(status, json={"error": "boom"})
    with pytest.raises(NodeExecutionError) as info:
        await http_call(recorder, {"httpUrl": URL})
    assert info.value.retryable is retryable
    assert f"HTTP GET {URL} failed with status {status}" in str(info.value)
    assert "boom" in str(info.value)


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_http_transport_errors_are_retryable(
    http_call: Callable[..., Any], error: Exception
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(NodeExecutionError) as info:
        await http_call(Recorder(fail), {"httpUrl": URL})
    assert info.value.retryable is True


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "No URL configured for HTTP node (httpUrl)"),
        ({"httpUrl": ""}, "No URL configured for HTTP node (httpUrl)"),
        ({"httpUrl": "ftp://files.test/x"}, "httpUrl"),
        ({"httpUrl": "api.test/x"}, "httpUrl"),
        ({"httpUrl": URL, "httpMethod": "TRACE"}, "httpMethod"),
    ],
)
async def test_http_config_errors(
    http_call: Callable[..., Any], config: dict[str, Any], message: str
) -> None:
    recorder = answer(200)
    with pytest.raises(NodeConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await http_call(recorder, config)
    assert recorder.requests == []


def test_http_registration() -> None:
    spec = get_spec("http")
    assert (spec.network, spec.retries) == (True, 2)
    assert spec.timeout_s is not None and spec.timeout_s >= 30


def node(**config: Any) -> NodeDef:
    return NodeDef(id="n_http", type="http", config={"httpUrl": URL, "retryDelayMs": 1, **config})


@pytest.mark.parametrize(("status", "calls"), [(500, 3), (503, 3), (404, 1), (400, 1)])
async def test_http_retries_only_retryable_failures(
    make_ctx: MakeCtx, make_resources: MakeResources, status: int, calls: int
) -> None:
    recorder = answer(status, json={"error": "boom"})
    ctx = make_ctx("http", resources=make_resources(recorder), node_id="n_http")
    with pytest.raises(NodeExecutionError, match=f"status {status}"):
        await run_with_retries(node(), None, ctx)
    assert len(recorder.requests) == calls


async def test_http_succeeds_after_a_retry(
    make_ctx: MakeCtx, make_resources: MakeResources
) -> None:
    replies = iter([httpx.Response(502, text="bad gateway"), httpx.Response(200, json=SENSORS)])
    recorder = Recorder(lambda request: next(replies))
    ctx = make_ctx("http", resources=make_resources(recorder), node_id="n_http")
    result = await run_with_retries(node(), None, ctx)
    assert result["outputData"] == SENSORS
    assert result["attempts"] == 2
    assert len(recorder.requests) == 2
