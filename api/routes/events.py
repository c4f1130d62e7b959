"""The event streams: one execution's (`/api/executions/{id}/events`, `/ws`) and every
execution the key may see (`/api/events`, `/api/ws`), as Server-Sent Events or WebSocket
messages. Keys may also come as `?api_key=`; an unknown or another org's execution is 404
before any stream starts (a WebSocket is closed with 4404)."""

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, WebSocket
from starlette.exceptions import HTTPException

from api.deps import Caller, StoreDep, StreamCallerDep, caller_of
from api.event_hub import EventHub
from api.event_stream import EventStream, EventStreamResponse, StreamFilter, pump_websocket
from api.schemas import API_ERRORS, error_responses
from database.events import EVENT_TYPES
from database.interfaces import ApiStore
from errors import ExecutionNotFound
from states import TERMINAL_STATUSES

router = APIRouter(tags=["events"], responses=API_ERRORS)

_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `id:` the event id, `event:` its type, `data:` its "
        "JSON; `: ping` comments while idle",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
After = Annotated[int | None, Query(ge=0, description="Resume after this event id")]
Types = Annotated[
    str | None, Query(max_length=500, description="Comma-separated event types to carry")
]
LastEventId = Annotated[str | None, Header(max_length=40)]
WS_CODES = {401: 4401, 403: 4403, 404: 4404, 422: 4422}
"""WebSocket close codes of refused streams (4000 + the HTTP status)."""


def _hub(request: Request | WebSocket) -> EventHub:
    hub: EventHub = request.app.state.events
    return hub


def parse_types(raw: str | None) -> frozenset[str] | None:
    """`?types=a,b`: None (every type) when absent; 422 naming an unknown type."""
    if raw is None or not raw.strip():
        return None
    types = frozenset(t.strip() for t in raw.split(",") if t.strip())
    if unknown := sorted(types - set(EVENT_TYPES)):
        known = ", ".join(EVENT_TYPES)
        raise HTTPException(422, f"Unknown event type(s): {', '.join(unknown)} (known: {known})")
    return types


def resume_point(last_event_id: str | None, after: int | None) -> int | None:
    """The `Last-Event-ID` header (what a reconnecting EventSource sends) wins over `?after=`."""
    if last_event_id is None or not last_event_id.strip():
        return after
    if not last_event_id.strip().isdigit():
        raise HTTPException(422, "Last-Event-ID must be an event id (a whole number)")
    return int(last_event_id)


def global_filter(
    caller: Caller, organization_id: str | None, workflow_id: str | None, types: str | None
) -> StreamFilter:
    """`/api/events`: an organization key sees its org only (naming another is 403); a service
    key sees every org unless it names one."""
    caller.check_body_org(organization_id)
    organization = caller.organization or organization_id
    return StreamFilter(
        organization=organization,
        organization_given=organization is not None,
        workflow_id=workflow_id or None,
        types=parse_types(types),
    )


async def execution_stream(
    store: ApiStore,
    hub: EventHub,
    caller: Caller,
    execution_id: str,
    types: str | None,
    after: int | None,
) -> EventStream:
    """An execution's stream from `after` (default: its first event); ExecutionNotFound for
    an unknown or another org's execution."""
    flt = StreamFilter(execution_id=execution_id, types=parse_types(types))
    row = await store.get_execution(execution_id, caller.organization)
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id} not found")
    ended = row["status"] in TERMINAL_STATUSES
    return await EventStream(hub, flt, after or 0, ended=ended).open()


@router.get(
    "/api/executions/{execution_id}/events",
    responses={**_SSE, **error_responses(404)},
)
async def execution_events(
    execution_id: str,
    request: Request,
    store: StoreDep,
    caller: StreamCallerDep,
    after: After = None,
    types: Types = None,
    last_event_id: LastEventId = None,
) -> EventStreamResponse:
    """Everything so far (or after `Last-Event-ID` / `after`), then live; ends after the
    terminal event."""
    point = resume_point(last_event_id, after)
    stream = await execution_stream(store, _hub(request), caller, execution_id, types, point)
    return EventStreamResponse(stream)


@router.get(
    "/api/events",
    responses={**_SSE, **error_responses(403)},
)
async def all_events(
    request: Request,
    caller: StreamCallerDep,
    after: After = None,
    types: Types = None,
    workflow_id: Annotated[str | None, Query(alias="workflowId", max_length=200)] = None,
    organization_id: Annotated[str | None, Query(alias="organizationId", max_length=200)] = None,
    last_event_id: LastEventId = None,
) -> EventStreamResponse:
    """Every execution the key may see, live (from `Last-Event-ID` / `after` when resumed)."""
    flt = global_filter(caller, organization_id, workflow_id, types)
    point = resume_point(last_event_id, after)
    return EventStreamResponse(await EventStream(_hub(request), flt, point).open())


def _ws_caller(websocket: WebSocket) -> Caller:
    query, headers = websocket.query_params, websocket.headers
    auth = headers.get("authorization") or ""
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    caller = caller_of(bearer, headers.get("x-api-key"), query.get("api_key"))
    if caller is None:
        raise HTTPException(401, "Missing or invalid API key")
    return caller


def _ws_after(query: Mapping[str, Any]) -> int | None:
    raw = query.get("after")
    if raw is None:
        return None
    if not str(raw).isdigit():
        raise HTTPException(422, "after must be an event id (a whole number)")
    return int(raw)


async def _refuse(websocket: WebSocket, exc: Exception) -> None:
    code, reason = 404, str(exc)
    if isinstance(exc, HTTPException):
        code, reason = exc.status_code, str(exc.detail)
    await websocket.close(WS_CODES.get(code, 4422), reason[:120])


@router.websocket("/api/executions/{execution_id}/ws")
async def execution_ws(websocket: WebSocket, execution_id: str) -> None:
    """One JSON event per message; closed 1000 after the terminal event."""
    await websocket.accept()
    try:
        caller, query = _ws_caller(websocket), websocket.query_params
        store: ApiStore = websocket.app.state.store
        after, types = _ws_after(query), query.get("types")
        stream = await execution_stream(store, _hub(websocket), caller, execution_id, types, after)
    except (HTTPException, ExecutionNotFound) as exc:
        await _refuse(websocket, exc)
        return
    await pump_websocket(websocket, stream)


@router.websocket("/api/ws")
async def all_ws(websocket: WebSocket) -> None:
    """Every execution the key may see, one JSON event per message."""
    await websocket.accept()
    try:
        caller, query = _ws_caller(websocket), websocket.query_params
        flt = global_filter(
            caller, query.get("organizationId"), query.get("workflowId"), query.get("types")
        )
        stream = await EventStream(_hub(websocket), flt, _ws_after(query)).open()
    except (HTTPException, ExecutionNotFound) as exc:
        await _refuse(websocket, exc)
        return
    await pump_websocket(websocket, stream)
