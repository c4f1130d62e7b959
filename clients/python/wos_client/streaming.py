"""What both clients' event-stream readers share: the reconnect budget and backoff, the timeouts
of a stream, and the check that an answer is an event stream."""

import time
from dataclasses import dataclass

import httpx

from wos_client.errors import ConnectionFailed, StreamError
from wos_client.events import HEARTBEAT_S

STREAM_READ_TIMEOUT_S = 3 * HEARTBEAT_S
"""A stream that sent nothing, not even a heartbeat, for this long is taken as dropped."""
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 5.0


@dataclass
class Reconnects:
    """How many times in a row a stream may be reopened after failing (`limit`); the count
    starts again once an event arrives."""

    limit: int
    failures: int = 0

    def reset(self) -> None:
        self.failures = 0

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures > self.limit:
            raise ConnectionFailed(
                f"The event stream failed {self.failures} times in a row: {exc!r}"
            ) from exc

    def ended_cleanly(self, received: bool) -> None:
        """A connection the service closed; one that sent nothing counts as a failure, so a
        service that keeps closing at once is not reopened forever."""
        if not received:
            self.failed(ConnectionError("the stream ended without an event"))

    def delay(self) -> float:
        """Seconds to wait before reopening: 0.25 s doubling to 5 s."""
        if self.failures == 0:
            return 0.0
        return float(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (self.failures - 1)))


def stream_timeout(base: httpx.Timeout, deadline: float | None) -> httpx.Timeout:
    """The client's timeouts, but a read may wait for the heartbeat (or until `deadline`)."""
    read = STREAM_READ_TIMEOUT_S
    if deadline is not None:
        read = max(0.05, min(read, deadline - time.monotonic()))
    return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)


def check_stream(response: httpx.Response) -> None:
    media = response.headers.get("content-type", "").split(";")[0].strip()
    if media != "text/event-stream":
        raise StreamError(f"Expected an event stream, got {media or 'no content type'}")
