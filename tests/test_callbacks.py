"""Execution callbacks: the outbox on every store, the retry schedule, the execute/retry bodies,
and signed deliveries to a local receiver that fails first and then accepts (in-process service
on SQLite, PostgreSQL and memory, with the real HTTP client and outbound policy)."""

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from config import Settings, get_settings
from database import NewExecution, Store
from database.interfaces import Delivery, DeliveryResult, NewDelivery
from flows.callbacks import (
    MAX_PAYLOAD_BYTES,
    Attempt,
    CallbackService,
    bounded_payload,
    next_state,
    retry_delay,
    webhook_id,
)
from tasks.context import http_client
from tests.conftest import Service
from tests.e2e import MockServer

SECRET = "whsec_" + base64.b64encode(b"callback-test-secret-32-bytes!!!").decode()
TRIGGER_ONLY = {
    "nodes": [{"id": "t", "type": "trigger"}, {"id": "o", "type": "output"}],
    "connections": [{"fromNodeId": "t", "toNodeId": "o"}],
}


def settings_of(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def delivery(attempts: int = 0, created_at: float = 1000.0) -> Delivery:
    return Delivery(
        "msg_1_x", 1, "e1", "http://127.0.0.1/h", "execution.completed", "{}", "pending",
        attempts, created_at, created_at, None, None,
    )  # fmt: skip


def test_retry_delay_doubles_from_the_base_up_to_an_hour() -> None:
    assert [retry_delay(n, 5.0) for n in range(1, 8)] == [5, 10, 20, 40, 80, 160, 320]
    assert retry_delay(11, 5.0) == 3600.0 and retry_delay(500, 5.0) == 3600.0
    assert retry_delay(3, 0.1) == pytest.approx(0.4)


def test_next_state_retries_retryable_failures_for_the_window_then_fails() -> None:
    settings = settings_of()
    assert (
        settings.CALLBACK_RETRY_BASE_SECONDS == 5 and settings.CALLBACK_RETRY_FOR_SECONDS == 86400
    )
    done = next_state(delivery(), Attempt(True), settings, 1000.0)
    assert (done.status, done.error) == ("delivered", None)
    again = next_state(delivery(attempts=2), Attempt(False, "HTTP 503", True), settings, 2000.0)
    assert (again.status, again.error, again.next_attempt_at) == ("pending", "HTTP 503", 2020.0)
    stop = next_state(delivery(attempts=2), Attempt(False, "HTTP 404"), settings, 2000.0)
    assert (stop.status, stop.error, stop.next_attempt_at) == ("failed", "HTTP 404", None)
    # 20 failed attempts: 5 + 10 + … + 3600 s add up to about 24 h; the next one would be later
    late = next_state(
        delivery(attempts=30), Attempt(False, "Timed out", True), settings, 1000.0 + 86000
    )
    assert late.status == "failed" and late.error is not None
    assert late.error.startswith("Timed out (gave up after 31 attempts")


def test_webhook_ids_are_stable_per_event_and_url() -> None:
    assert webhook_id(7, "http://a/h") == webhook_id(7, "http://a/h")
    assert (
        len({webhook_id(7, "http://a/h"), webhook_id(8, "http://a/h"), webhook_id(7, "http://b/h")})
        == 3
    )


def test_an_oversized_event_is_sent_without_its_output() -> None:
    event = {"id": 3, "type": "node.completed", "executionId": "e", "nodeId": "n"}
    small = json.dumps(event)
    assert bounded_payload(small) == small
    big = json.loads(bounded_payload(json.dumps({**event, "output": "x" * MAX_PAYLOAD_BYTES})))
    assert big == {**event, "truncated": True}


@pytest.mark.parametrize(
    "secret",
    ["plain", "whsec_not*base64", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_a_malformed_callback_secret_is_refused_at_start_without_echo(secret: str) -> None:
    with pytest.raises(ValidationError) as info:
        settings_of(CALLBACK_SECRET=secret)
    assert "CALLBACK_SECRET" in str(info.value) and secret not in str(info.value)


async def _execution(store: Store, eid: str, callback: dict[str, Any] | None) -> None:
    await store.create_execution(
        NewExecution(
            execution_id=eid,
            workflow_id="wf",
            workflow_name=None,
            organization_id=None,
            inputs={},
            definition=json.dumps(TRIGGER_ONLY),
            mode="inline",
            callback=json.dumps(callback) if callback else None,
        )
    )


def _new(event_id: int, eid: str = "e1", url: str = "http://127.0.0.1:9/h") -> NewDelivery:
    return NewDelivery(webhook_id(event_id, url), event_id, eid, url, "execution.completed", "{}")


async def test_outbox_inserts_each_delivery_once_and_keeps_the_cursor(store: Store) -> None:
    outbox = store.callbacks
    await _execution(store, "e1", {"url": "http://127.0.0.1:9/h", "events": ["node.failed"]})
    await _execution(store, "e2", None)
    assert await outbox.callbacks_of(["e1", "e2", "nope"]) == {
        "e1": json.dumps({"url": "http://127.0.0.1:9/h", "events": ["node.failed"]})
    }
    assert await outbox.cursor() == 0
    assert await outbox.add_deliveries([_new(5), _new(6)], cursor=6) == 2
    assert await outbox.add_deliveries([_new(5), _new(6), _new(7)], cursor=7) == 1  # a replay
    assert await outbox.add_deliveries([], cursor=3) == 0
    assert await outbox.cursor() == 7  # never back
    listed = await outbox.deliveries_of("e1", limit=10)
    assert [(x.event_id, x.status, x.attempts) for x in listed] == [
        (5, "pending", 0),
        (6, "pending", 0),
        (7, "pending", 0),
    ]
    assert [x.event_id for x in await outbox.deliveries_of("e1", limit=2)] == [6, 7]


async def test_outbox_claims_lease_deliveries_to_one_sender(store: Store) -> None:
    outbox = store.callbacks
    assert await outbox.next_due() is None
    await outbox.add_deliveries([_new(1), _new(2), _new(3)], cursor=3)
    due = await outbox.next_due()
    assert due is not None and due <= time.time()
    first = await outbox.claim_due("inst:a", 2, lease_s=60)
    assert [x.event_id for x in first] == [1, 2]
    assert [x.event_id for x in await outbox.claim_due("inst:b", 5, lease_s=60)] == [3]
    assert await outbox.claim_due("inst:b", 5, lease_s=60) == []  # all leased
    assert not await outbox.settle(first[0].id, "inst:b", DeliveryResult("delivered"))
    later = time.time() + 3600
    assert await outbox.settle(first[0].id, "inst:a", DeliveryResult("pending", "HTTP 500", later))
    assert await outbox.settle(first[1].id, "inst:a", DeliveryResult("delivered"))
    await outbox.release("inst:")  # a restart of the instance: event 3 is sent again at once
    assert [x.event_id for x in await outbox.claim_due("inst:c", 5, lease_s=60)] == [3]
    rows = {x.event_id: x for x in await outbox.deliveries_of("e1", limit=10)}
    assert (rows[1].status, rows[1].attempts, rows[1].last_error) == ("pending", 1, "HTTP 500")
    assert rows[1].next_attempt_at == pytest.approx(later)
    assert (rows[2].status, rows[2].attempts) == ("delivered", 1) and rows[2].delivered_at
    assert await outbox.claim_due("inst:c", 5, lease_s=60) == []  # 1 is not due for an hour
    assert await outbox.settle(rows[3].id, "inst:c", DeliveryResult("failed", "HTTP 410"))
    assert await outbox.next_due() == pytest.approx(later)


# --- the execute and retry bodies --------------------------------------------------------


@pytest.fixture
def callback_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings of the callback tests (set before the `service` fixture reads them)."""
    monkeypatch.setenv("CALLBACK_SECRET", SECRET)
    monkeypatch.setenv("CALLBACK_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("CALLBACK_TIMEOUT_SECONDS", "0.6")


async def test_execute_with_a_callback_needs_callback_secret(service: Service) -> None:
    r = await service.execute(workflow=TRIGGER_ONLY, callback={"url": "http://127.0.0.1:9/h"})
    assert r.status_code == 422
    assert "CALLBACK_SECRET" in r.json()["detail"]
    assert await service.count_executions() == 0


@pytest.mark.parametrize(
    ("callback", "message"),
    [
        ({"url": "ftp://127.0.0.1/h"}, "http:// or https://"),
        ({"url": "http:///nohost"}, "http:// or https://"),
        ({"url": "http://127.0.0.1:9/h", "events": ["execution.done"]}, "execution.done"),
        ({"url": "http://127.0.0.1:9/h", "events": []}, "at least 1"),
        ({"url": "http://169.254.169.254/latest"}, "refused by policy"),
        ({"url": "http://[::ffff:169.254.1.1]/h"}, "refused by policy"),
    ],
)
async def test_execute_refuses_an_invalid_callback(
    callback_env: None, service: Service, callback: dict[str, Any], message: str
) -> None:
    r = await service.execute(workflow=TRIGGER_ONLY, callback=callback)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert await service.count_executions() == 0


async def test_a_retry_keeps_the_callback_unless_its_body_gives_one(
    callback_env: None, service: Service
) -> None:
    failing = {
        "nodes": [{"id": "h", "type": "http", "config": {"httpUrl": "ftp://x"}}],
        "connections": [],
    }
    r = await service.execute(workflow=failing, callback={"url": "http://127.0.0.1:9/a"})
    assert r.status_code == 200, r.text
    eid = r.json()["executionId"]
    assert (await service.wait(eid))["status"] == "failed"
    kept = (await service.client.post(f"/api/executions/{eid}/retry")).json()["executionId"]
    other = {"callback": {"url": "http://127.0.0.1:9/b", "events": ["node.failed"]}}
    replaced = (await service.client.post(f"/api/executions/{eid}/retry", json=other)).json()
    for retried, expected in [
        (
            kept,
            {
                "url": "http://127.0.0.1:9/a",
                "events": ["execution.completed", "execution.failed", "execution.cancelled"],
            },
        ),
        (replaced["executionId"], other["callback"]),
    ]:
        row = await service.store.get_execution(retried)
        assert row is not None and json.loads(row["callback"]) == expected


# --- deliveries ---------------------------------------------------------------------------


@pytest.fixture
async def sender(service: Service) -> AsyncIterator[CallbackService]:
    """The callbacks of the service's worker, running (dispatcher and sender)."""
    settings = get_settings()
    client = http_client(settings)
    callbacks = CallbackService(settings, service.store, client, "test-instance:1:aa")  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(callbacks.run(stop))
    yield callbacks
    stop.set()
    await running
    await client.aclose()


class Receiver(MockServer):
    """A callback receiver on 127.0.0.1 answering from a script: a status, or a delay (s) that
    outlasts the sender's timeout; the last answer repeats."""

    def __init__(self, *script: int | float) -> None:
        self.script = list(script)
        self.arrived: list[float] = []
        super().__init__({("POST", "/hook"): self._answer})

    def _answer(self, _request: dict[str, Any]) -> tuple[int, Any]:
        self.arrived.append(time.monotonic())
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, float):
            return 200, step
        return step, {"answer": step}


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(*request.param)
    yield server
    server.close()


async def wait_callbacks(
    service: Service, eid: str, until: str, timeout: float = 20
) -> list[dict[str, Any]]:
    """The execution's `callbacks` once every one has status `until`."""
    deadline = time.monotonic() + timeout
    while True:
        body = (await service.client.get(f"/api/executions/{eid}")).json()
        callbacks: list[dict[str, Any]] = body["callbacks"]
        if callbacks and all(c["status"] == until for c in callbacks):
            return callbacks
        if time.monotonic() > deadline:
            raise AssertionError(f"callbacks of {eid} never all {until}: {callbacks}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("receiver", [(500, 1.5, 200)], indirect=True)
async def test_signed_callback_is_retried_after_a_500_and_a_timeout_then_delivered(
    callback_env: None, service: Service, sender: CallbackService, receiver: Receiver
) -> None:
    url = f"http://127.0.0.1:{receiver.port}/hook"
    r = await service.execute(workflow=TRIGGER_ONLY, callback={"url": url})
    eid = r.json()["executionId"]
    assert (await service.wait(eid))["status"] == "completed"
    finished = time.monotonic()
    [callback] = await wait_callbacks(service, eid, "delivered")
    assert callback["url"] == url and callback["event"] == "execution.completed"
    assert callback["attempts"] == 3 and callback["lastError"] is None and callback["deliveredAt"]
    requests = receiver.calls("POST", "/hook")
    assert len(requests) == 3
    assert receiver.arrived[0] - finished < 5  # the first attempt within 5 s of the event
    assert receiver.arrived[1] - receiver.arrived[0] >= 0.2  # then the backoff: 0.2 s, 0.4 s
    assert receiver.arrived[2] - receiver.arrived[1] >= 0.6 + 0.4
    assert {req["headers"]["webhook-id"] for req in requests} == {callback["webhookId"]}
    for req in requests:  # every attempt verifies with the Standard Webhooks library
        event = Webhook(SECRET).verify(req["body"], req["headers"])
        assert req["headers"]["content-type"] == "application/json"
    assert event["type"] == "execution.completed" and event["executionId"] == eid
    assert event["progress"]["percentage"] == 100 and event["timestamp"].endswith("Z")
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()).verify(
            requests[0]["body"], requests[0]["headers"]
        )


@pytest.mark.parametrize("receiver", [(404,)], indirect=True)
async def test_a_4xx_answer_fails_the_callback_at_once(
    callback_env: None, service: Service, sender: CallbackService, receiver: Receiver
) -> None:
    url = f"http://127.0.0.1:{receiver.port}/hook"
    events = ["node.completed", "execution.completed"]
    r = await service.execute(workflow=TRIGGER_ONLY, callback={"url": url, "events": events})
    eid = r.json()["executionId"]
    await service.wait(eid)
    callbacks = await wait_callbacks(service, eid, "failed")
    assert [c["event"] for c in callbacks] == [
        "node.completed",
        "node.completed",
        "execution.completed",
    ]
    assert all(c["attempts"] == 1 and c["lastError"].startswith("HTTP 404") for c in callbacks)
    await asyncio.sleep(0.6)  # no further attempt
    assert len(receiver.calls("POST", "/hook")) == 3


@pytest.mark.parametrize("receiver", [(200,)], indirect=True)
async def test_a_callback_to_a_denied_address_fails_with_the_policy_error(
    callback_env: None, monkeypatch: pytest.MonkeyPatch, service: Service, receiver: Receiver
) -> None:
    """`localhost` is a name: the API cannot refuse it without a lookup; the delivery resolves it
    to 127.0.0.1, which OUTBOUND_ALLOW_PRIVATE=false denies."""
    url = f"http://localhost:{receiver.port}/hook"
    r = await service.execute(workflow=TRIGGER_ONLY, callback={"url": url})
    eid = r.json()["executionId"]
    await service.wait(eid)
    monkeypatch.setenv("OUTBOUND_ALLOW_PRIVATE", "false")
    get_settings.cache_clear()
    settings = get_settings()
    client = http_client(settings)
    callbacks = CallbackService(settings, service.store, client, "t:1:bb")  # type: ignore[arg-type]
    try:
        while await callbacks.dispatch_once():
            pass
        assert await callbacks.send_due() == 1
    finally:
        await client.aclose()
    [callback] = await wait_callbacks(service, eid, "failed")
    assert callback["attempts"] == 1
    assert callback["lastError"] == "Outbound connection to localhost refused by policy"
    assert receiver.calls("POST", "/hook") == []


@pytest.mark.parametrize("receiver", [(200,)], indirect=True)
async def test_two_workers_send_every_delivery_exactly_once(
    callback_env: None, service: Service, receiver: Receiver
) -> None:
    """Two worker processes' dispatchers read the same events and their senders claim from the
    same outbox: the unique (event, url) rows and the leases keep every delivery to one POST."""
    settings = get_settings()
    client = http_client(settings)
    stop = asyncio.Event()
    workers = [
        CallbackService(settings, service.store, client, f"inst:{n}:w")  # type: ignore[arg-type]
        for n in (1, 2)
    ]
    running = [asyncio.create_task(w.run(stop)) for w in workers]
    url = f"http://127.0.0.1:{receiver.port}/hook"
    callback = {"url": url, "events": ["node.completed", "execution.completed"]}
    try:
        eids = []
        for _ in range(8):
            r = await service.execute(workflow=TRIGGER_ONLY, callback=callback)
            eids.append(r.json()["executionId"])
        for eid in eids:
            await service.wait(eid)
            assert len(await wait_callbacks(service, eid, "delivered")) == 3
    finally:
        stop.set()
        await asyncio.gather(*running)
        await client.aclose()
    ids = [req["headers"]["webhook-id"] for req in receiver.calls("POST", "/hook")]
    assert len(ids) == 24 and len(set(ids)) == 24
