"""`AsyncClient`: the asyncio client of the workflow service (httpx); `Client`'s twin."""

import asyncio
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx

from wos_client import calls
from wos_client.calls import Call, Callback, NodeRunResult, Priority, Version
from wos_client.client import DEFAULT_URL
from wos_client.errors import (
    ApiError,
    ConnectionFailed,
    Forbidden,
    StreamError,
    Unauthorized,
    WaitTimeout,
    error_for,
)
from wos_client.events import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Event,
    StreamRequest,
    aparse_lines,
    stream_request,
)
from wos_client.models import (
    CancelResult,
    ExecutionGraph,
    ExecutionLogs,
    ExecutionPublic,
    ExecutionsPage,
    ExecutionSubmitted,
    Health,
    RetrySubmitted,
    VersionDetail,
    VersionDiff,
    VersionList,
    WorkflowExecutions,
)
from wos_client.streaming import Reconnects, check_stream, stream_timeout

T = TypeVar("T")


class AsyncClient:
    """A client of the service at `base_url`. `api_key` is sent as `X-API-Key`; `http` replaces
    the httpx client it builds (its base URL and headers are then yours to set).

        async with AsyncClient("http://localhost:8000") as wos:
            submitted = await wos.execute("wf_1", {"name": "Ada"})
            execution = await wos.wait(submitted.executionId, timeout=60)
            print(execution.status, execution.finalOutput)
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self.http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{call.method} {call.path}: {exc!r}") from exc
        if response.is_error:
            raise error_for(response)
        return call.read(response.json())

    async def health(self) -> Health:
        """`GET /`: `status` is "running" when the service is up."""
        return await self._send(calls.health())

    async def execute(
        self,
        workflow_id: str | None = None,
        inputs: dict[str, Any] | None = None,
        *,
        workflow: dict[str, Any] | None = None,
        organization_id: str | None = None,
        version: Version | None = None,
        priority: Priority | None = None,
        mode: str | None = None,
        callback: Callback | None = None,
        idempotency_key: str | None = None,
    ) -> ExecutionSubmitted:
        """Queue a run of the stored workflow (or of an inline `workflow` definition) and return
        at once; `wait` for its end."""
        return await self._send(
            calls.execute(
                workflow_id,
                inputs,
                workflow=workflow,
                organization_id=organization_id,
                version=version,
                priority=priority,
                mode=mode,
                callback=callback,
                idempotency_key=idempotency_key,
            )
        )

    async def get(self, execution_id: str) -> ExecutionPublic:
        return await self._send(calls.get(execution_id))

    async def logs(self, execution_id: str) -> ExecutionLogs:
        return await self._send(calls.logs(execution_id))

    async def graph(self, execution_id: str) -> ExecutionGraph:
        """The nodes and connections the execution runs (without node configs)."""
        return await self._send(calls.graph(execution_id))

    async def cancel(self, execution_id: str) -> CancelResult:
        """`success` is false when the execution had already ended."""
        return await self._send(calls.cancel(execution_id))

    async def retry(
        self,
        execution_id: str,
        *,
        from_scratch: bool = False,
        callback: Callback | None = None,
        priority: Priority | None = None,
    ) -> RetrySubmitted:
        """A new run of a failed or cancelled execution, reusing its completed nodes' results
        unless `from_scratch`."""
        return await self._send(
            calls.retry(
                execution_id, from_scratch=from_scratch, callback=callback, priority=priority
            )
        )

    async def run_node(
        self,
        node_id: str,
        node_type: str,
        node: dict[str, Any] | None = None,
        input_data: Any = None,
        *,
        workflow_id: str | None = None,
    ) -> NodeRunResult:
        """Run one node now (nothing is stored); a failing node is `NodeRunFailed`."""
        return await self._send(calls.run_node(node_id, node_type, node, input_data, workflow_id))

    async def history(self, workflow_id: str, *, limit: int = 50) -> WorkflowExecutions:
        """The workflow's executions, newest first."""
        return await self._send(calls.history(workflow_id, limit))

    async def executions(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> ExecutionsPage:
        """One page of every workflow's executions, newest first; pass `nextCursor` as `before`
        for the next one."""
        return await self._send(
            calls.executions(status=status, workflow_id=workflow_id, limit=limit, before=before)
        )

    async def versions(self, workflow_id: str, *, limit: int = 100) -> VersionList:
        """The workflow's versions, newest first."""
        return await self._send(calls.versions(workflow_id, limit))

    async def version(self, workflow_id: str, number: int) -> VersionDetail:
        """One version with its definition under `workflow`."""
        return await self._send(calls.version(workflow_id, number))

    async def diff(
        self, workflow_id: str, old: int | Literal["draft"], new: int | Literal["draft"]
    ) -> VersionDiff:
        """What changed from version `old` to `new` (numbers or "draft")."""
        return await self._send(calls.diff(workflow_id, old, new))

    async def events(
        self,
        execution_id: str | None = None,
        *,
        workflow_id: str | None = None,
        organization_id: str | None = None,
        types: list[str] | tuple[str, ...] | frozenset[str] | None = None,
        after: int | None = None,
        max_reconnects: int = 5,
    ) -> AsyncIterator[Event]:
        """The events of one execution (ending after its last) or, without `execution_id`, of
        every execution the key may see (endless). A dropped connection is reopened from the
        last event received (`Last-Event-ID`), up to `max_reconnects` times in a row."""
        request = stream_request(
            execution_id, workflow_id=workflow_id, organization_id=organization_id, types=types
        )
        async for item in self._stream(request, after, Reconnects(max_reconnects), None):
            if item is not None:
                yield item

    async def _stream(
        self, request: StreamRequest, after: int | None, tries: Reconnects, deadline: float | None
    ) -> AsyncIterator[Event | None]:
        """Events and heartbeats (None), reconnecting; for an execution's stream, ends after
        the terminal event or once a connection ends having sent nothing."""
        last_id, one_execution = after, request.one_execution
        while True:
            received = False
            try:
                async with self.http.stream(
                    "GET",
                    request.path,
                    params=request.params,
                    headers=request.headers(last_id),
                    timeout=stream_timeout(self.http.timeout, deadline),
                ) as response:
                    if response.is_error:
                        await response.aread()
                        raise error_for(response)
                    check_stream(response)
                    async for item in aparse_lines(response.aiter_lines()):
                        if item is not None:
                            received, last_id = True, item.id
                            tries.reset()
                        yield item
                        if one_execution and item is not None and item.terminal:
                            return
                if one_execution and not received:
                    return
                tries.ended_cleanly(received)
            except httpx.TransportError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout("The stream sent nothing before the deadline") from exc
                tries.failed(exc)
            await asyncio.sleep(tries.delay())

    async def wait(
        self, execution_id: str, *, timeout: float | None = None, poll_interval: float = 1.0
    ) -> ExecutionPublic:
        """Block until the execution has ended and return it as `get` does. Listens to its event
        stream; polls `get` every `poll_interval` seconds if the stream is unavailable. Raises
        `WaitTimeout` after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        current = await self.get(execution_id)
        if current.status in TERMINAL_STATUSES:
            return current
        request = stream_request(
            execution_id, workflow_id=None, organization_id=None, types=TERMINAL_EVENTS
        )
        try:
            async for item in self._stream(request, None, Reconnects(3), deadline):
                if item is not None and item.terminal:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"Execution {execution_id} did not end in {timeout} s")
        except (Unauthorized, Forbidden):
            raise
        except (ApiError, ConnectionFailed, StreamError):
            pass  # no usable stream (an older service, a proxy that buffers): poll instead
        return await self._poll(execution_id, deadline, poll_interval, timeout)

    async def _poll(
        self, execution_id: str, deadline: float | None, interval: float, timeout: float | None
    ) -> ExecutionPublic:
        while True:
            current = await self.get(execution_id)
            if current.status in TERMINAL_STATUSES:
                return current
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"Execution {execution_id} did not end in {timeout} s")
                await asyncio.sleep(min(interval, left))
            else:
                await asyncio.sleep(interval)
