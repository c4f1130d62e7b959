"""Execution callbacks on the API side: the `callback` of an execute or retry body as stored with
the execution (refused early when it can never be sent), and the deliveries of the status view.
Sending is the workers' job (`flows/callbacks.py`)."""

import datetime as dt
from urllib.parse import urlsplit

from api.schemas import CallbackCreate, CallbackPublic
from config import get_settings
from database.interfaces import ApiStore, Row
from errors import InvalidRequest
from jsonutil import dump_json, iso_ms
from states import DeliveryStatus
from tasks.outbound import DEFAULT_PORTS, OutboundPolicy, OutboundRefused

STATUS_DELIVERIES = 500
"""Deliveries the status view lists (the latest)."""


def stored_callback(callback: CallbackCreate | None) -> str | None:
    """The callback as the execution keeps it (JSON text), or None. Raises InvalidRequest when
    CALLBACK_SECRET is not set, or when the outbound policy refuses the URL's host without a
    lookup (an address literal or a listed name); a name that resolves to a denied address is
    refused when the delivery is attempted."""
    if callback is None:
        return None
    settings = get_settings()
    if settings.CALLBACK_SECRET is None:
        raise InvalidRequest(
            "callback needs CALLBACK_SECRET (the Standard Webhooks secret callbacks are "
            "signed with); this service has none configured"
        )
    parts = urlsplit(callback.url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    policy = OutboundPolicy.from_settings(settings)
    try:
        if not policy.check_literal(host, port):
            policy.check(host, port, [])
    except OutboundRefused as exc:
        raise InvalidRequest(f"callback url refused: {exc}") from None
    return dump_json({"url": callback.url, "events": callback.events})


async def callbacks_public(store: ApiStore, row: Row) -> list[CallbackPublic]:
    """The callback deliveries of an execution row for its status view (the caller checked
    the org); no read at all for an execution without a callback."""
    if not row.get("callback"):
        return []
    deliveries = await store.callbacks.deliveries_of(row["id"], STATUS_DELIVERIES)
    return [
        CallbackPublic(
            webhookId=x.id,
            url=x.url,
            event=x.event_type,
            status=x.status,
            attempts=x.attempts,
            nextAttemptAt=iso_ms(dt.datetime.fromtimestamp(x.next_attempt_at, dt.UTC))
            if x.status == DeliveryStatus.PENDING
            else None,
            lastError=x.last_error,
            deliveredAt=x.delivered_at,
        )
        for x in deliveries
    ]
