"""Execution events and the Server-Sent Events parser both clients read them with.

An event stream is `GET /api/executions/{id}/events` (one execution's; it ends after the
terminal event) or `GET /api/events` (every execution the key may see; it never ends). Each
frame is `id:` (the event id), `event:` (its type) and `data:` (its JSON); `: ping` comments
arrive while the stream is idle. A client that reconnects sends `Last-Event-ID` and gets
everything after it, so no event is lost or repeated across a disconnect."""

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from pydantic import ConfigDict

from wos_client.errors import StreamError
from wos_client.models import WosModel

TERMINAL_EVENTS = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
MAX_EVENT_BYTES = 1024 * 1024
"""An event larger than this is refused (the service's are a few KB: outputs are previews)."""
HEARTBEAT_S = 15.0
"""The service sends a comment at least this often on an idle stream."""


class Event(WosModel):
    """One event: `id`, `type`, `executionId`, `workflowId`, `timestamp` and `progress` always;
    node events add `nodeId`, `nodeType`, `nodeLabel` (and, once run, `durationMs`, `attempts`);
    `node.completed` and `execution.completed` an `output` preview (at most 2 KB of JSON);
    `node.failed`, `execution.failed` and `execution.cancelled` an `error`. Fields a newer
    service adds are kept (`model_extra`)."""

    model_config = ConfigDict(extra="allow")

    id: int
    type: str
    executionId: str
    workflowId: str | None = None
    timestamp: str | None = None
    progress: dict[str, int] | None = None
    nodeId: str | None = None
    nodeType: str | None = None
    nodeLabel: str | None = None
    durationMs: int | float | None = None
    attempts: int | None = None
    output: Any = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether this is its execution's last event (completed, failed or cancelled)."""
        return self.type in TERMINAL_EVENTS


class _Heartbeat:
    """What the parser returns for a comment line (the service's idle `: ping`)."""


HEARTBEAT = _Heartbeat()


@dataclass
class SseParser:
    """Frames of a `text/event-stream`, fed one line at a time (without its line ending)."""

    data: list[str] = field(default_factory=list)
    size: int = 0
    event_id: str | None = None

    def feed(self, line: str) -> Event | _Heartbeat | None:
        """The `Event` a blank line ends, `HEARTBEAT` for a comment, else None."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return HEARTBEAT
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        self.size += len(line)
        if self.size > MAX_EVENT_BYTES:
            raise StreamError(f"An event is larger than {MAX_EVENT_BYTES} bytes")
        if name == "data":
            self.data.append(value)
        elif name == "id":
            self.event_id = value
        return None

    def _dispatch(self) -> Event | None:
        if not self.data:
            self.size = 0
            return None
        text, self.data, self.size = "\n".join(self.data), [], 0
        try:
            payload: Any = json.loads(text)
            if isinstance(payload, dict) and "id" not in payload and self.event_id:
                payload["id"] = int(self.event_id)
            return Event.model_validate(payload)
        except ValueError as exc:
            raise StreamError(f"Not an event: {text[:200]!r}") from exc


def parse_lines(lines: Iterator[str]) -> Iterator[Event | None]:
    """The stream's events, and None for each heartbeat (so a reader can check a deadline
    while the stream is idle)."""
    parser = SseParser()
    for line in lines:
        item = parser.feed(line)
        if item is not None:
            yield item if isinstance(item, Event) else None


async def aparse_lines(lines: AsyncIterator[str]) -> AsyncIterator[Event | None]:
    parser = SseParser()
    async for line in lines:
        item = parser.feed(line)
        if item is not None:
            yield item if isinstance(item, Event) else None


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Where an event stream is read from, and where it resumes."""

    path: str
    params: dict[str, str]
    one_execution: bool
    """An execution's stream, which ends after its terminal event (else: every execution's)."""

    def headers(self, last_id: int | None) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        return headers


def stream_request(
    execution_id: str | None,
    *,
    workflow_id: str | None,
    organization_id: str | None,
    types: list[str] | tuple[str, ...] | frozenset[str] | None,
) -> StreamRequest:
    params: dict[str, str] = {}
    if types:
        params["types"] = ",".join(sorted(types))
    if execution_id is not None:
        if workflow_id is not None or organization_id is not None:
            raise ValueError("an execution's stream takes no workflow_id or organization_id")
        path = f"/api/executions/{quote(execution_id, safe='')}/events"
        return StreamRequest(path, params, one_execution=True)
    if workflow_id is not None:
        params["workflowId"] = workflow_id
    if organization_id is not None:
        params["organizationId"] = organization_id
    return StreamRequest("/api/events", params, one_execution=False)
