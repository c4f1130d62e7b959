"""Python client of the workflow orchestration service: `Client` (sync) and `AsyncClient`
(asyncio) on httpx, pydantic models of every request and response (`wos_client.models`), and
the error tree of `wos_client.errors`."""

from wos_client.async_client import AsyncClient
from wos_client.calls import NodeRunResult
from wos_client.client import Client
from wos_client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServerError,
    StreamError,
    Unauthorized,
    WaitTimeout,
    WosError,
)
from wos_client.events import TERMINAL_EVENTS, TERMINAL_STATUSES, Event

__version__ = "0.1.0"
__all__ = [
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "Forbidden",
    "InvalidRequest",
    "NodeRunResult",
    "NotFound",
    "PayloadTooLarge",
    "ServerError",
    "StreamError",
    "Unauthorized",
    "WaitTimeout",
    "WosError",
]
