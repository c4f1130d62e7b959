"""llm handler (contract §4.5, Decisions 12/13) against a local OpenAI-compatible HTTP server."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from errors import NodeConfigError, NodeExecutionError
from models import NodeDef
from tasks import get_spec
from tasks.context import Resources
from tasks.run_node import run_with_retries
from tests.conftest import CallNode, MakeCtx, MakeResources


class FakeOpenAI:
    """Records every request; answers each with the next scripted `(status, content)` reply
    (the last one repeats). A 2xx reply is a chat completion whose message is `content`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[tuple[int, str]] = [(200, "ok")]
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                fake.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "json": json.loads(body or b"null"),
                    }
                )
                status, content = fake.replies[min(len(fake.requests), len(fake.replies)) - 1]
                payload = (
                    fake.completion(content)
                    if status < 300
                    else {"error": {"message": content, "type": "server_error", "code": None}}
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    @staticmethod
    def completion(content: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": content},
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }

    @property
    def messages(self) -> list[str]:
        return [r["json"]["messages"][0]["content"] for r in self.requests]


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


@pytest.fixture
def llm_resources(openai_server: FakeOpenAI, make_resources: MakeResources) -> Resources:
    return make_resources(
        OPENAI_BASE_URL=f"http://127.0.0.1:{openai_server.port}/v1",
        OPENAI_API_KEY="test-key",
        OPENAI_MODEL="gpt-test",
    )


async def run_llm(
    call_node: CallNode, resources: Resources, config: dict[str, Any], data: Any = None
) -> Any:
    return await call_node("llm", config, data, resources=resources)


async def test_llm_request_shape(
    call_node: CallNode, llm_resources: Resources, openai_server: FakeOpenAI
) -> None:
    openai_server.replies = [(200, "Summary.")]
    data = {"name": "Café", "qty": 2}
    result = await run_llm(call_node, llm_resources, {"llmPrompt": "Summarise"}, data)
    [request] = openai_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer test-key"
    assert request["json"]["model"] == "gpt-test"
    assert request["json"]["messages"] == [
        {
            "role": "user",
            "content": ('Summarise\n\nContext data:\n{\n  "name": "Café",\n  "qty": 2\n}'),
        }
    ]
    assert result["outputData"] == {"response": "Summary.", "outputType": "text", "inputData": data}
    assert result["llmResponse"] == "Summary."


@pytest.mark.parametrize(
    ("config", "data", "message"),
    [
        ({"llmPrompt": "Hi"}, None, "Hi"),
        ({"llmPrompt": "Hi"}, {}, "Hi"),
        ({"llmPrompt": "Hi"}, [], "Hi"),
        ({"prompt": "From AI"}, [1], "From AI\n\nContext data:\n[\n  1\n]"),
        ({"llmPrompt": "Editor", "prompt": "AI"}, None, "Editor"),
        ({"llmPrompt": "Hi", "llmIncludeInput": False}, {"secret": 1}, "Hi"),
        (
            {"llmPrompt": "Hi", "llmIncludeInput": True},
            {"a": 1},
            'Hi\n\nContext data:\n{\n  "a": 1\n}',
        ),
    ],
)
async def test_llm_message_context(
    call_node: CallNode,
    llm_resources: Resources,
    openai_server: FakeOpenAI,
    config: dict[str, Any],
    data: Any,
    message: str,
) -> None:
    await run_llm(call_node, llm_resources, config, data)
    assert openai_server.messages == [message]


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"outputType": "number"}, "number"),
        ({"outputType": "date"}, "YYYY-MM-DD"),
        (
            {"outputType": "enum", "enumOptions": ["low", "medium", "high"]},
            '"low", "medium", "high"',
        ),
    ],
)
async def test_llm_output_type_instruction(
    call_node: CallNode,
    llm_resources: Resources,
    openai_server: FakeOpenAI,
    config: dict[str, Any],
    needle: str,
) -> None:
    await run_llm(call_node, llm_resources, {"llmPrompt": "Rate it", **config}, {"a": 1})
    [message] = openai_server.messages
    assert message.startswith('Rate it\n\nContext data:\n{\n  "a": 1\n}\n\nIMPORTANT: ')
    assert needle in message.split("IMPORTANT: ", 1)[1]


async def test_llm_text_output_has_no_instruction(
    call_node: CallNode, llm_resources: Resources, openai_server: FakeOpenAI
) -> None:
    await run_llm(call_node, llm_resources, {"llmPrompt": "Hi", "outputType": "text"})
    assert "IMPORTANT" not in openai_server.messages[0]


@pytest.mark.parametrize(
    ("config", "raw", "answer"),
    [
        ({"outputType": "number"}, "42", "42"),
        ({"outputType": "number"}, "42.0", "42"),
        ({"outputType": "number"}, "The answer is 42.5 units", "42.5"),
        ({"outputType": "number"}, "-3", "-3"),
        ({"outputType": "number"}, "no idea", "no idea"),
        ({"outputType": "number"}, "1-2", "1-2"),
        ({"outputType": "date"}, "It was on 2024-03-15, I think", "2024-03-15"),
        ({"outputType": "date"}, "March 15", "March 15"),
        ({"outputType": "enum", "enumOptions": ["Low", "Medium", "High"]}, ' "medium" ', "Medium"),
        ({"outputType": "enum", "enumOptions": ["Low", "Medium", "High"]}, "HIGH", "High"),
        ({"outputType": "enum", "enumOptions": ["Low", "High"]}, " unsure ", "unsure"),
        ({"outputType": "text"}, "  as is  ", "  as is  "),
        ({}, "plain", "plain"),
    ],
)
async def test_llm_post_processing(
    call_node: CallNode,
    llm_resources: Resources,
    openai_server: FakeOpenAI,
    config: dict[str, Any],
    raw: str,
    answer: str,
) -> None:
    openai_server.replies = [(200, raw)]
    result = await run_llm(call_node, llm_resources, {"llmPrompt": "Q", **config})
    assert result["outputData"]["response"] == answer
    assert result["llmResponse"] == answer
    assert result["outputData"]["outputType"] == config.get("outputType", "text")


async def test_llm_without_prompt(
    call_node: CallNode, llm_resources: Resources, openai_server: FakeOpenAI
) -> None:
    with pytest.raises(NodeConfigError, match="^No prompt configured for LLM node$"):
        await run_llm(call_node, llm_resources, {"llmPrompt": "", "outputType": "text"})
    assert openai_server.requests == []


@pytest.mark.parametrize("key", [None, ""])
async def test_llm_without_api_key(
    call_node: CallNode, make_resources: MakeResources, openai_server: FakeOpenAI, key: str | None
) -> None:
    resources = make_resources(
        OPENAI_BASE_URL=f"http://127.0.0.1:{openai_server.port}/v1", OPENAI_API_KEY=key
    )
    with pytest.raises(NodeConfigError, match="^OpenAI API key not configured$"):
        await run_llm(call_node, resources, {"llmPrompt": "Hi"})
    assert openai_server.requests == []


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (401, False)]
)
async def test_llm_api_errors(
    call_node: CallNode,
    llm_resources: Resources,
    openai_server: FakeOpenAI,
    status: int,
    retryable: bool,
) -> None:
    openai_server.replies = [(status, "upstream says no")]
    with pytest.raises(NodeExecutionError) as info:
        await run_llm(call_node, llm_resources, {"llmPrompt": "Hi"})
    assert info.value.retryable is retryable
    assert len(openai_server.requests) == 1  # the SDK itself never retries
    if not retryable:
        assert str(status) in str(info.value) and "upstream says no" in str(info.value)


@pytest.mark.parametrize("key", ["~", "~^", "~^!"])
async def test_llm_short_api_key_is_redacted_from_the_error(
    call_node: CallNode, make_resources: MakeResources, openai_server: FakeOpenAI, key: str
) -> None:
    openai_server.replies = [(401, f"Incorrect API key provided: {key}")]
    resources = make_resources(
        OPENAI_BASE_URL=f"http://127.0.0.1:{openai_server.port}/v1", OPENAI_API_KEY=key
    )
    with pytest.raises(NodeExecutionError) as info:
        await run_llm(call_node, resources, {"llmPrompt": "Hi"})
    assert str(info.value) == (
        "LLM request failed with status 401: Error code: 401 - Incorrect API key provided: ***"
    )


async def test_llm_connection_error_is_retryable(
    call_node: CallNode, make_resources: MakeResources, openai_server: FakeOpenAI
) -> None:
    port = openai_server.port
    openai_server.server.shutdown()
    openai_server.server.server_close()
    resources = make_resources(OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", OPENAI_API_KEY="k")
    with pytest.raises(NodeExecutionError) as info:
        await run_llm(call_node, resources, {"llmPrompt": "Hi"})
    assert info.value.retryable is True


def llm_node(**config: Any) -> NodeDef:
    return NodeDef(id="n_llm", type="llm", config={"llmPrompt": "Hi", "retryDelayMs": 1, **config})


@pytest.mark.parametrize(
    ("replies", "requests", "ok"),
    [
        ([(500, "down")], 3, False),
        ([(400, "bad request")], 1, False),
        ([(503, "busy"), (200, "fine")], 2, True),
    ],
)
async def test_llm_retries_through_run_node(
    make_ctx: MakeCtx,
    llm_resources: Resources,
    openai_server: FakeOpenAI,
    replies: list[tuple[int, str]],
    requests: int,
    ok: bool,
) -> None:
    openai_server.replies = replies
    ctx = make_ctx("llm", resources=llm_resources, node_id="n_llm")
    if ok:
        result = await run_with_retries(llm_node(), None, ctx)
        assert result["llmResponse"] == "fine"
    else:
        with pytest.raises(NodeExecutionError):
            await run_with_retries(llm_node(), None, ctx)
    assert len(openai_server.requests) == requests


def test_llm_registration() -> None:
    spec = get_spec("llm")
    assert (spec.network, spec.retries, spec.timeout_s) == (True, 2, 120)
