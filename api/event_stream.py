"""One client's event stream: history from the store, then live from the hub without a gap or a
duplicate at the hand-over; and how it is written as Server-Sent Events or WebSocket messages.

The hand-over: the stream subscribes first, then reads the store; live events with an id it
already sent are skipped, so nothing committed in between is lost or sent twice. An execution's
stream ends after its terminal event. A subscriber that falls `QUEUE_MAX` events behind is
disconnected: `SlowConsumer` carries the last id it got, to resume from.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.event_hub import PAGE, EventHub, Subscription
from database.events import TERMINAL_EVENT_TYPES
from database.interfaces import Event

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
"""An SSE comment at least this often while no event is sent."""
SLOW_CONSUMER_CLOSE = 1008
"""WebSocket close code (policy violation) of a disconnected slow consumer."""


class SlowConsumer(Exception):
    """The client read too slowly; it can resume after `last_id`."""

    def __init__(self, last_id: int) -> None:
        super().__init__(f"Slow consumer disconnected; resume after event {last_id}")
        self.last_id = last_id


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """Which events a stream carries: one execution's, or those of an organization and a
    workflow; of some types only."""

    execution_id: str | None = None
    organization: str | None = None
    """Only this organization's events (an organization key's, or a service key's filter)."""
    organization_given: bool = False
    """Filter by `organization` even when it is None (never for a service key without one)."""
    workflow_id: str | None = None
    types: frozenset[str] | None = None

    def routes(self, event: Event) -> bool:
        """What the hub queues for this stream (an execution's stream gets all its events, so
        that it sees the terminal one whatever `types` says)."""
        if self.execution_id is not None:
            return event.execution_id == self.execution_id
        if self.organization_given and event.organization_id != self.organization:
            return False
        if self.workflow_id is not None and event.workflow_id != self.workflow_id:
            return False
        return self.types is None or event.type in self.types

    def shows(self, event: Event) -> bool:
        return self.routes(event) and (self.types is None or event.type in self.types)

    def ends(self, event: Event) -> bool:
        return self.execution_id is not None and event.type in TERMINAL_EVENT_TYPES


class EventStream:
    """The stream's events: those after `after` from the store (None: none, live only), then
    live. `ended`: the execution was already terminal, so the stream ends after the history.
    Iterating raises SlowConsumer when the client fell too far behind; `dropped` returns as
    soon as it has (a writer blocked on a client that does not read never gets that far)."""

    def __init__(
        self, hub: EventHub, flt: StreamFilter, after: int | None, *, ended: bool = False
    ) -> None:
        self.hub, self.flt, self.after, self.ended = hub, flt, after, ended
        self.sub: Subscription | None = None
        self._live = asyncio.Event()
        self.start: int | None = None
        """Where the stream starts: `after`, or the last id when it went live."""

    async def open(self) -> "EventStream":
        """Subscribe (before any read of the store: the hand-over relies on it)."""
        self.sub = await self.hub.subscribe(self.flt.routes, self.flt.execution_id)
        return self

    def close(self) -> None:
        if self.sub is not None:
            self.hub.unsubscribe(self.sub)

    async def dropped(self) -> None:
        assert self.sub is not None
        await self._live.wait()
        await self.sub.overflow()

    async def batches(self) -> AsyncIterator[list[Event]]:
        """The events a batch at a time: a page of history, or what arrived live since the
        last batch (one write per batch, not per event); never an empty batch."""
        sub, flt, store = self.sub, self.flt, self.hub.store
        assert sub is not None
        last = self.after if self.after is not None else await store.last_event_id()
        self.start = last
        while self.after is not None:
            page = await store.events_after(last, execution_id=flt.execution_id, limit=PAGE)
            shown, last, ends = self._sift(page, last)
            if shown:
                yield shown
            if ends or (len(page) < PAGE and self.ended):
                return
            if len(page) == PAGE:
                continue
            if not sub.overflowed:
                break
            sub.restart()  # history took long: what was queued meanwhile is in the store
        self._live.set()
        while batch := await sub.take():
            shown, last, ends = self._sift(batch, last)
            if shown:
                yield shown
            if ends:
                return
        if not sub.ended:
            raise SlowConsumer(last)

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for batch in self.batches():
            for event in batch:
                yield event

    def _sift(self, events: list[Event], last: int) -> tuple[list[Event], int, bool]:
        """(the events to send, the last id seen, did the stream end?): ids up to `last` were
        sent already (the hand-over), an execution's stream ends at its terminal event."""
        shown = []
        for event in events:
            if event.id <= last:
                continue
            last = event.id
            if self.flt.shows(event):
                shown.append(event)
            if self.flt.ends(event):
                return shown, last, True
        return shown, last, False


def sse_frame(event: Event) -> bytes:
    """`id:`, `event:` and `data:` (the event's JSON is one line)."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


class EventStreamResponse(Response):
    """`text/event-stream`: one frame per event, a `: ping` comment after `HEARTBEAT_S` without
    one. The answer ends after the stream's last event. A slow consumer's connection is dropped
    at once: its writes may be blocked on a client that does not read, so the answer is left
    unfinished and the server closes the connection (`_SlowConsumerLog`)."""

    media_type = "text/event-stream"

    def __init__(self, stream: EventStream) -> None:
        super().__init__(headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.raw_headers = [h for h in self.raw_headers if h[0] != b"content-length"]
        self.stream, self.heartbeat_s = stream, HEARTBEAT_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        writer = asyncio.ensure_future(self._write(send))
        left = asyncio.ensure_future(_disconnected(receive))
        dropped = asyncio.ensure_future(self.stream.dropped())
        try:
            await asyncio.wait([writer, left, dropped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, left, dropped):
                task.cancel()
            await asyncio.gather(writer, left, dropped, return_exceptions=True)
            self.stream.close()
        error = None if writer.cancelled() else writer.exception()
        if not writer.cancelled() and error is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif _finished(dropped) or isinstance(error, SlowConsumer):
            _SlowConsumerLog.expect()  # left unfinished: the server drops the connection
        elif error is not None:
            logger.error("event stream failed", exc_info=error, extra={"action": "event_stream"})

    async def _write(self, send: Send) -> None:
        batches = self.stream.batches()
        upcoming = asyncio.ensure_future(anext(batches))
        try:
            while True:
                done, _ = await asyncio.wait([upcoming], timeout=self.heartbeat_s)
                body = b": ping\n\n"
                if done:
                    try:
                        body = b"".join(sse_frame(event) for event in upcoming.result())
                    except StopAsyncIteration:
                        return
                    upcoming = asyncio.ensure_future(anext(batches))
                await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            upcoming.cancel()
            await asyncio.gather(upcoming, return_exceptions=True)


class _SlowConsumerLog(logging.Filter):
    """uvicorn logs an error for an answer left unfinished; for a dropped slow consumer (or a
    client that left) that is expected, so that one line is dropped."""

    pending = 0
    installed = False

    @classmethod
    def expect(cls) -> None:
        if not cls.installed:
            logging.getLogger("uvicorn.error").addFilter(cls())
            cls.installed = True
        cls.pending = min(cls.pending + 1, 1000)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _UNFINISHED and _SlowConsumerLog.pending > 0:
            _SlowConsumerLog.pending -= 1
            return False
        return True


_UNFINISHED = "ASGI callable returned without completing response."


def _finished(task: "asyncio.Future[None]") -> bool:
    """Did the task end by itself (not cancelled, no error)?"""
    return task.done() and not task.cancelled() and task.exception() is None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def pump_websocket(websocket: WebSocket, stream: EventStream) -> None:
    """Send each event as one JSON text message; close 1000 after an execution's terminal
    event, `SLOW_CONSUMER_CLOSE` (reason: the id to resume after) for a slow consumer, whether
    it is noticed by the stream or while a send waits on the client."""
    last: int | None = None

    async def send_all() -> None:
        nonlocal last
        async for event in stream:
            await websocket.send_text(event.data)
            last = event.id

    sender = asyncio.ensure_future(send_all())
    dropped = asyncio.ensure_future(stream.dropped())
    try:
        await asyncio.wait([sender, dropped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, dropped):
            task.cancel()
        await asyncio.gather(sender, dropped, return_exceptions=True)
        stream.close()
    error = None if sender.cancelled() else sender.exception()
    if sender.cancelled() or isinstance(error, SlowConsumer):
        resume = last if last is not None else stream.start or 0
        await websocket.close(SLOW_CONSUMER_CLOSE, str(SlowConsumer(resume)))
    elif error is None:
        ending = stream.sub is not None and stream.sub.ended
        await websocket.close(1001 if ending else 1000, "Service shutting down" if ending else None)
    elif not isinstance(error, WebSocketDisconnect):  # the client left: nothing to tell
        logger.error("event stream failed", exc_info=error, extra={"action": "event_stream"})
        await websocket.close(1011, "Internal error")
