"""What a Prefect task run records of a failed node: the node error, scrubbed of the node's
declared secrets (its config's `SecretStr` fields, its URLs' user-info and secret query values)
and the service's (`SecretStr` settings), without the exceptions chained to it."""

from typing import Any

import httpx
import pytest

from config import Settings
from errors import NodeError
from flows.workflow_flow import node_task, task_run_name
from models import NodeDef
from tasks import get_spec
from tasks.registry import secret_keys
from tasks.run_node import run_attempt
from tests.conftest import MakeCtx, MakeResources


@pytest.mark.parametrize(
    ("node_type", "keys"),
    [
        ("mysql", {"password", "mysqlPassword"}),
        ("sendEmail", {"password", "emailSmtpPass"}),
        ("sendSMS", {"auth_token", "twilioAuthToken"}),
        ("http", set()),
        ("addField", set()),
    ],
)
def test_node_types_declare_their_secrets_by_type(node_type: str, keys: set[str]) -> None:
    assert set(secret_keys(get_spec(node_type).config)) == keys


def test_the_services_secrets_are_its_secret_settings() -> None:
    expected = {
        "OPENAI_API_KEY",
        "SMTP_PASSWORD",
        "TWILIO_AUTH_TOKEN",
        "ESIOS_API_KEY",
        "CLIMATIQ_API_KEY",
        "PREFECT_SERVER_API_AUTH_STRING",
    }
    assert expected <= set(secret_keys(Settings))


def echo(request: httpx.Request) -> httpx.Response:
    """An upstream that quotes the token it was sent, bare, in its error body."""
    return httpx.Response(500, json={"error": f"bad token {request.url.params['token']}"})


async def test_an_echoed_url_secret_is_scrubbed_from_the_node_error(
    make_ctx: MakeCtx, make_resources: MakeResources
) -> None:
    node = NodeDef(
        id="h",
        type="http",
        label="Fetch",
        config={"httpUrl": "http://api.test/x?token=T0KEN-3a9f&page=1", "retries": 0},
    )
    ctx = make_ctx("http", resources=make_resources(echo))
    with pytest.raises(NodeError) as caught:
        await run_attempt(node, None, ctx)
    assert "T0KEN-3a9f" not in str(caught.value)
    assert "bad token ***" in str(caught.value)


async def test_a_service_secret_is_scrubbed_from_the_node_error(
    make_ctx: MakeCtx, make_resources: MakeResources
) -> None:
    key = "sk-SERVICE-KEY-77c1"

    def quote_key(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": f"key {key} is not allowed here"})

    node = NodeDef(id="h", type="http", config={"httpUrl": "http://api.test/x"})
    resources = make_resources(quote_key, OPENAI_API_KEY=key)
    with pytest.raises(NodeError) as caught:
        await run_attempt(node, None, make_ctx("http", resources=resources))
    assert key not in str(caught.value) and "key *** is not allowed" in str(caught.value)


async def test_the_task_raises_the_node_error_without_its_causes(make_ctx: MakeCtx) -> None:
    """Prefect's failure log prints the exception's traceback, chained causes included: a
    library's exception text (here httpx's, quoting the URL) must not be among them."""
    secret_url = "http://api.test/x?token=T0KEN-3a9f"
    node = NodeDef(id="h", type="http", config={"httpUrl": secret_url, "retries": 0})
    with pytest.raises(NodeError) as direct:
        await run_attempt(node, None, make_ctx("http"))
    assert direct.value.__cause__ is not None  # inline mode keeps the cause for our own logs
    with pytest.raises(NodeError) as in_task:
        await node_task.fn(node, None, make_ctx("http"))
    error: Any = in_task.value
    assert error.__cause__ is None and error.__suppress_context__
    assert "T0KEN-3a9f" not in str(error)


@pytest.mark.parametrize(
    ("node", "name"),
    [
        (NodeDef(id="a", type="addField", label="  Mark it "), "Mark it"),
        (NodeDef(id="a", type="addField", label=""), "addField:a"),
        (NodeDef(id="a", type="addField"), "addField:a"),
        (NodeDef(id="a", type="addField", label="x" * 500), "x" * 200),
    ],
)
def test_task_runs_are_named_after_node_labels(node: NodeDef, name: str) -> None:
    assert task_run_name(node) == name
