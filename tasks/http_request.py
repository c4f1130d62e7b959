"""The http node: one request through the shared httpx client."""

from typing import Any

import httpx
from pydantic import AliasChoices, Field

from errors import NodeConfigError, NodeExecutionError
from tasks.context import RunContext
from tasks.cpu import decode_json, encode_json
from tasks.redaction import redact
from tasks.registry import Envelope, NodeConfig, envelope, node

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}
WITH_BODY = {"POST", "PUT", "PATCH"}
REQUEST_TIMEOUT_S = 30.0
_UNDONE = {"content-encoding", "content-length", "transfer-encoding"}
"""Headers that describe the body as sent, not the decoded body `send` returns."""


class HttpConfig(NodeConfig):
    url: str | None = Field(default=None, validation_alias=AliasChoices("httpUrl", "url"))
    method: str = Field(default="GET", validation_alias=AliasChoices("httpMethod", "method"))


async def send(
    ctx: RunContext, method: str, url: str, *, label: str, secret: str | None = None, **kwargs: Any
) -> httpx.Response:
    """One request through the shared client (`kwargs` go to `httpx.AsyncClient.stream`); the
    body is streamed and cut at HTTP_MAX_RESPONSE_BYTES (decoded bytes). A
    timeout or transport failure is a retryable NodeExecutionError, `<label> timed out: …` or
    `<label> failed: …`, with `secret` redacted and, when there is one, without the cause."""
    try:
        async with ctx.http.stream(method, url, timeout=REQUEST_TIMEOUT_S, **kwargs) as response:
            body = await _read_body(response, ctx.settings.HTTP_MAX_RESPONSE_BYTES, label)
    except httpx.TimeoutException as exc:
        error = NodeExecutionError(f"{label} timed out: {type(exc).__name__}", retryable=True)
        raise error from (None if secret else exc)
    except httpx.HTTPError as exc:
        text = redact(f"{label} failed: {type(exc).__name__}: {exc}", secret)
        raise NodeExecutionError(text, retryable=True) from (None if secret else exc)
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _UNDONE]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions=response.extensions,
    )


async def _read_body(response: httpx.Response, limit: int, label: str) -> bytes:
    """The decoded body, read chunk by chunk; over `limit` bytes (declared or counted) it is
    a NodeExecutionError naming HTTP_MAX_RESPONSE_BYTES, before the rest is read."""
    declared = response.headers.get("content-length", "")
    too_big = NodeExecutionError(
        f"{label}: response body over the limit of {limit:,} bytes (HTTP_MAX_RESPONSE_BYTES)"
    )
    if (
        declared.isdigit()
        and int(declared) > limit
        and not response.headers.get("content-encoding")
    ):
        raise too_big
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse(response: httpx.Response) -> Any:
    """The JSON body (a big one decoded in slices, `tasks.cpu.decode_json`), else the text."""
    try:
        return await decode_json(response.content)
    except ValueError:
        return {"response": response.text}


@node("http", config=HttpConfig, retries=2, timeout_s=60, network=True)
async def http(config: HttpConfig, data: Any, ctx: RunContext) -> Envelope:
    """JSON body = the input for POST/PUT/PATCH; a non-2xx answer is an error (5xx/429 retried)."""
    if not config.url:
        raise NodeConfigError("No URL configured for HTTP node (httpUrl)")
    if not config.url.startswith(("http://", "https://")):
        raise NodeConfigError(f"httpUrl must start with http:// or https:// (got {config.url!r})")
    method = config.method.strip().upper()
    if method not in METHODS:
        raise NodeConfigError(
            f"Unsupported httpMethod {config.method!r}; use one of " + ", ".join(sorted(METHODS))
        )
    body: dict[str, Any] = {}
    if method in WITH_BODY:  # the input as JSON, encoded as httpx would but in slices
        text = await encode_json({} if data is None else data, compact=True)
        body = {"content": text.encode(), "headers": {"Content-Type": "application/json"}}
    response = await send(ctx, method, config.url, label=f"HTTP {method} {config.url}", **body)
    code = response.status_code
    if not 200 <= code < 300:
        raise NodeExecutionError(
            f"HTTP {method} {config.url} failed with status {code}: {response.text[:300]}",
            retryable=code >= 500 or code == 429,
        )
    return envelope(
        f"HTTP {method} {config.url} - Status {code}", await _parse(response), statusCode=code
    )
