"""What the client raises. Catch `WosError` for all of it:

WosError
├── ApiError                   the service answered 4xx/5xx: `status_code`, `detail`
│   ├── Unauthorized           401 (missing or invalid API key)
│   ├── Forbidden              403 (an organization key naming another organization)
│   ├── NotFound               404 (unknown id, or of another organization)
│   ├── Conflict               409 (e.g. retrying an execution that has not ended)
│   ├── PayloadTooLarge        413
│   ├── InvalidRequest         422
│   └── ServerError            5xx
├── ConnectionFailed           no answer (refused, reset, timed out); `__cause__` is httpx's
├── StreamError                an event stream sent something that is not an event stream
└── WaitTimeout                `wait` gave up (also a `TimeoutError`)
"""

from typing import Any

import httpx


class WosError(Exception):
    """Base of every error of the client."""


class ApiError(WosError):
    """The service answered with an error status; `detail` is its readable message."""

    def __init__(
        self, status_code: int, detail: str, response: httpx.Response | None = None
    ) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.response = response


class Unauthorized(ApiError):
    """Missing or invalid API key."""


class Forbidden(ApiError):
    """The key may not act for the organization the request names."""


class NotFound(ApiError):
    """Unknown id (or one of another organization than the key's)."""


class Conflict(ApiError):
    """The request conflicts with the current state."""


class PayloadTooLarge(ApiError):
    """The request (or a definition it reads) is over the service's size limits."""


class InvalidRequest(ApiError):
    """The service refused the request as invalid."""


class ServerError(ApiError):
    """The service failed; its log has the details under the id in `detail`."""


class ConnectionFailed(WosError):
    """The service could not be reached or did not answer in time."""


class StreamError(WosError):
    """An event stream sent an event that is not valid (or is larger than the bound)."""


class WaitTimeout(WosError, TimeoutError):
    """The execution did not end within the time `wait` was given."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
}


def detail_of(response: httpx.Response) -> str:
    """The answer's `detail` (its `error` for older answers), else `HTTP <code>`."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if value:  # FastAPI's default validation detail is a list
                return str(value)
    text = response.text.strip()
    return text[:500] if text else f"HTTP {response.status_code}"


def error_for(response: httpx.Response) -> ApiError:
    """The `ApiError` subclass of an error answer."""
    status = response.status_code
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return kind(status, detail_of(response), response)
