"""The FastAPI app: lifespan (store, shared clients, worker wake-up), the body-size limit, the
mapping of errors to `{"detail": str}` answers, and the routers of `api.routes`.

To add a route: write it in the router of its resource (`api/routes/<resource>.py`) with a
response model from `api/schemas.py`, and keep what it does in a plain function over `ApiStore`
(`api/executions.py`) that unit tests can call without HTTP.
"""

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.event_hub import EventHub
from api.rate_limits import open_submit_limits
from api.routes import ROUTERS
from api.routes.health import SERVICE, VERSION
from api.wakeup import WorkerWakeup
from config import get_settings
from database import open_store
from database.listen import listen_dsn
from errors import (
    Conflict,
    ExecutionNotFound,
    GraphValidationError,
    InvalidRequest,
    WorkflowError,
    WorkflowNotFound,
)
from tasks.context import open_resources
from tasks.redaction import install_log_redaction

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    install_log_redaction()  # nodes/execute runs nodes here: no URL secrets in its log lines
    app.state.store = await open_store(settings.database_url)
    app.state.resources = open_resources(settings, app.state.store)
    app.state.submit_limits = open_submit_limits(settings)
    app.state.wake_workers = WorkerWakeup(os.environ.get("WOS_WAKE_PORTS"))
    app.state.events = EventHub(app.state.store, listen_dsn=listen_dsn(settings.database_url))
    app.state.events.end_streams_on_exit()
    try:
        yield
    finally:
        await app.state.events.close()
        app.state.wake_workers.close()
        await app.state.resources.aclose()
        await app.state.store.close()


class BodyLimit:
    """Refuse request bodies over MAX_REQUEST_BYTES with 413: at once when the declared
    Content-Length is over, else (chunked bodies) as soon as the bytes read exceed it. The app's
    own answer to the interrupted read (FastAPI's 400 "error parsing the body") is replaced."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = get_settings().MAX_REQUEST_BYTES
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            return await _too_large(limit)(scope, receive, send)
        seen = 0
        exceeded = started = False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                exceeded = True
                raise _TooLarge
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to the read we interrupted
            started = True
            await send(message)

        try:
            await self.app(scope, limited, answer)
        except _TooLarge:
            pass
        if exceeded and not started:
            await _too_large(limit)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"Request body larger than {limit} bytes"}, 413)


app = FastAPI(title=SERVICE, version=VERSION, lifespan=lifespan)
app.add_middleware(BodyLimit)
for router in ROUTERS:
    app.include_router(router)


def _readable(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msg = f"Malformed JSON body: {err.get('ctx', {}).get('error', msg)}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "Invalid request"


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _readable(list(exc.errors()))}, 422)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=exc.headers)


_STATUS = {
    WorkflowNotFound: 404,
    ExecutionNotFound: 404,
    GraphValidationError: 422,
    InvalidRequest: 422,
    Conflict: 409,
}


@app.exception_handler(WorkflowError)
async def _workflow_error(_: Request, exc: WorkflowError) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse({"detail": str(exc)}, status)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """500 with an id only: exception texts can hold SQL and its parameters. The log has the
    traceback under the same id."""
    error_id = secrets.token_hex(6)
    logger.exception(
        "unhandled error %s in %s %s",
        error_id,
        request.method,
        request.url.path,
        extra={"error_id": error_id, "action": "unhandled_error"},
    )
    return JSONResponse({"detail": f"Internal error {error_id}"}, 500)
