"""Execution callbacks, run by every worker process: the dispatcher turns stored events into outbox
deliveries (`store.callbacks`), the sender POSTs them signed as the Standard Webhooks
specification says, and records each attempt.

At least once: a delivery keeps its `webhook-id` on every attempt, and one sent when its sender
died before recording it is sent again. Timeouts, connection errors, 408, 429 and 5xx are retried
after CALLBACK_RETRY_BASE_SECONDS, doubling up to an hour between attempts, for
CALLBACK_RETRY_FOR_SECONDS (24 h) after the event; any other answer but 2xx, and a target the
outbound policy refuses, fail the delivery at once.
"""

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from standardwebhooks import Webhook

from config import Settings
from database.interfaces import CallbackStore, Delivery, DeliveryResult, EventStore, NewDelivery
from jsonutil import dump_json
from states import DeliveryStatus
from tasks.outbound import OutboundRefused

logger = logging.getLogger(__name__)

DISPATCH_BATCH = 500
"""Events read per dispatcher step."""
SEND_CONCURRENCY = 32
"""Deliveries one worker process sends at once."""
DISPATCH_POLL_S = 0.5
SEND_POLL_S = 1.0
CURSOR_SAVE_S = 10.0
"""Without new deliveries, the dispatcher's cursor is stored at most this often (a restart then
reads up to that much again, which adds nothing twice)."""
LEASE_MARGIN_S = 30.0
"""A claim's lease is the request timeout plus this."""
MAX_BACKOFF_S = 3600.0
MAX_PAYLOAD_BYTES = 64 * 1024
"""A larger event is sent without its output (`truncated: true`)."""
MAX_RESPONSE_BYTES = 16 * 1024
"""Of a receiver's answer, at most this much is read (a snippet goes into lastError)."""
MAX_ERROR_CHARS = 500
STOP_GRACE_S = 2.0
USER_AGENT = "workflow-orchestration-service-callbacks"
_KEPT_WHEN_TRUNCATED = (
    *("id", "type", "executionId", "workflowId", "timestamp", "progress"),
    *("nodeId", "nodeType", "nodeLabel", "durationMs", "attempts"),
)


class CallbackSource(EventStore, Protocol):
    """What callbacks need from the store: the events and the outbox."""

    @property
    def callbacks(self) -> CallbackStore: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one POST ended: delivered, or the error and whether it is worth another attempt."""

    delivered: bool
    error: str | None = None
    retryable: bool = False


def webhook_id(event_id: int, url: str) -> str:
    """The delivery's stable id: its event and its URL (a replay of the event log finds it)."""
    return f"msg_{event_id}_{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def retry_delay(attempts: int, base_s: float) -> float:
    """The wait after `attempts` failed attempts: base, 2 × base, 4 × base, … at most an hour."""
    return min(base_s * 2.0 ** min(attempts - 1, 40), MAX_BACKOFF_S)


def next_state(
    delivery: Delivery, attempt: Attempt, settings: Settings, now: float
) -> DeliveryResult:
    """The delivery after `attempt` (its `attempts` do not count it yet)."""
    if attempt.delivered:
        return DeliveryResult(DeliveryStatus.DELIVERED.value)
    error = (attempt.error or "failed")[:MAX_ERROR_CHARS]
    if not attempt.retryable:
        return DeliveryResult(DeliveryStatus.FAILED.value, error)
    attempts = delivery.attempts + 1
    at = now + retry_delay(attempts, settings.CALLBACK_RETRY_BASE_SECONDS)
    if at > delivery.created_at + settings.CALLBACK_RETRY_FOR_SECONDS:
        window = settings.CALLBACK_RETRY_FOR_SECONDS
        return DeliveryResult(
            DeliveryStatus.FAILED.value,
            f"{error} (gave up after {attempts} attempts in {window:g} s)",
        )
    return DeliveryResult(DeliveryStatus.PENDING.value, error, at)


def bounded_payload(data: str) -> str:
    """The event JSON as sent: as stored, or without its output and error text beyond 2,000
    characters when over MAX_PAYLOAD_BYTES."""
    if len(data.encode()) <= MAX_PAYLOAD_BYTES:
        return data
    event = json.loads(data)
    kept: dict[str, Any] = {k: event[k] for k in _KEPT_WHEN_TRUNCATED if k in event}
    if event.get("error") is not None:
        kept["error"] = str(event["error"])[:2000]
    kept["truncated"] = True
    return dump_json(kept)


def _callback_spec(text: str | None) -> tuple[str, frozenset[str]] | None:
    if not text:
        return None
    spec = json.loads(text)
    return str(spec["url"]), frozenset(spec["events"])


async def post(
    client: httpx.AsyncClient, delivery: Delivery, signer: Webhook, timeout_s: float
) -> Attempt:
    """One signed POST of the delivery's payload; reads at most MAX_RESPONSE_BYTES of the answer
    and never follows a redirect."""
    now = int(time.time())
    body = delivery.payload
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery.id,
        "webhook-timestamp": str(now),
        "webhook-signature": signer.sign(delivery.id, dt.datetime.fromtimestamp(now, dt.UTC), body),
    }
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream(
                "POST",
                delivery.url,
                content=body.encode(),
                headers=headers,
                timeout=timeout_s,
                follow_redirects=False,
            ) as response:
                snippet = await _read_some(response)
    except OutboundRefused as exc:
        return Attempt(False, str(exc))
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(False, f"Timed out after {timeout_s:g} s", retryable=True)
    except httpx.HTTPError as exc:
        return Attempt(False, f"Connection error: {type(exc).__name__} {exc}".strip(), True)
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(True)
    error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    return Attempt(False, error, retryable=status in (408, 429) or status >= 500)


async def _read_some(response: httpx.Response) -> str:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= MAX_RESPONSE_BYTES:
            break
    return data[:200].decode("utf-8", "replace").strip()


class CallbackService:
    """The dispatcher and the sender of one worker process (`run` until `stop` is set). `owner`
    names this process's leases: `<instance>:` prefixed, so a restart gives them back."""

    def __init__(
        self, settings: Settings, store: CallbackSource, client: httpx.AsyncClient, owner: str
    ) -> None:
        self.settings, self.store, self.client, self.owner = settings, store, client, owner
        secret = settings.CALLBACK_SECRET
        self.signer = Webhook(secret.get_secret_value().strip()) if secret else None
        self.sending: set[asyncio.Task[None]] = set()
        self.send_wake = asyncio.Event()
        self._cursor: int | None = None
        """The last event this dispatcher handled (read from the store once)."""
        self._cursor_saved = 0.0

    @property
    def lease_s(self) -> float:
        return self.settings.CALLBACK_TIMEOUT_SECONDS + LEASE_MARGIN_S

    async def dispatch_once(self) -> bool:
        """Turn the events after the cursor into deliveries (one transaction with the cursor);
        True when a whole batch was read (more may be waiting)."""
        outbox = self.store.callbacks
        if self._cursor is None:
            self._cursor = await outbox.cursor()
        events = await self.store.events_after(self._cursor, limit=DISPATCH_BATCH)
        if not events:
            return False
        specs = await outbox.callbacks_of({e.execution_id for e in events})
        wanted = {eid: _callback_spec(text) for eid, text in specs.items()}
        new = []
        for e in events:
            spec = wanted.get(e.execution_id)
            if spec is not None and e.type in spec[1]:
                url = spec[0]
                payload = bounded_payload(e.data)
                new.append(
                    NewDelivery(webhook_id(e.id, url), e.id, e.execution_id, url, e.type, payload)
                )
        now = time.monotonic()
        if new or now - self._cursor_saved >= CURSOR_SAVE_S:
            if await outbox.add_deliveries(new, events[-1].id):
                self.send_wake.set()
            self._cursor_saved = now
        self._cursor = events[-1].id
        return len(events) == DISPATCH_BATCH

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        """Attempt one claimed delivery and record the attempt."""
        if self.signer is None:
            attempt = Attempt(
                False, "CALLBACK_SECRET is not configured: callbacks cannot be signed"
            )
        else:
            attempt = await post(
                self.client, delivery, self.signer, self.settings.CALLBACK_TIMEOUT_SECONDS
            )
        result = next_state(delivery, attempt, self.settings, time.time())
        if result.status != DeliveryStatus.DELIVERED:
            logger.warning(
                "callback %s of execution %s to %s: %s (%s)",
                delivery.id,
                delivery.execution_id,
                delivery.url,
                attempt.error,
                result.status,
                extra={"execution_id": delivery.execution_id, "action": "callback"},
            )
        await self.store.callbacks.settle(delivery.id, self.owner, result)
        return result

    async def send_due(self) -> int:
        """Claim what is due and send it, waiting for every attempt (tests and one-off runs)."""
        claimed = await self.store.callbacks.claim_due(self.owner, SEND_CONCURRENCY, self.lease_s)
        await asyncio.gather(*(self.deliver(x) for x in claimed))
        return len(claimed)

    async def _send_step(self) -> bool:
        """Claim as many due deliveries as there are free sending slots and start them."""
        free = SEND_CONCURRENCY - len(self.sending)
        if free <= 0:
            return False
        due = await self.store.callbacks.next_due()  # a read: claiming takes the write lock
        if due is None or due > time.time():
            return False
        claimed = await self.store.callbacks.claim_due(self.owner, free, self.lease_s)
        for delivery in claimed:
            task = asyncio.create_task(self._deliver_logged(delivery))
            self.sending.add(task)
            task.add_done_callback(self._sent)
        return len(claimed) == free

    async def _deliver_logged(self, delivery: Delivery) -> None:
        try:
            await self.deliver(delivery)
        except Exception:  # noqa: BLE001 - the lease expires and another attempt follows
            logger.exception("callback %s could not be recorded", delivery.id)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.sending.discard(task)
        self.send_wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch and send until `stop` is set; then give the in-flight sends STOP_GRACE_S
        and hand back every lease of this process (a later start resends at once)."""
        loops = [
            asyncio.create_task(self._every(self.dispatch_once, DISPATCH_POLL_S, asyncio.Event())),
            asyncio.create_task(self._every(self._send_step, SEND_POLL_S, self.send_wake)),
        ]
        try:
            await stop.wait()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if self.sending:
                _, late = await asyncio.wait(set(self.sending), timeout=STOP_GRACE_S)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.store.callbacks.release(self.owner)

    async def _every(
        self, step: Callable[[], Awaitable[bool]], poll_s: float, wake: asyncio.Event
    ) -> None:
        while True:
            try:
                more = await step()
            except Exception:  # noqa: BLE001 - a store hiccup must not stop callbacks
                logger.exception("callback %s failed; retrying", getattr(step, "__name__", "step"))
                more = False
                await asyncio.sleep(1)
            if more:
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), poll_s)
