"""A minimal HTTP/1.1 keep-alive client on asyncio streams, plus latency statistics.

The load generator shares the machine's 2 cores with the service it measures, so it must be
cheap: httpx costs ~0.5-1 ms of CPU per request, this client ~0.05 ms. It speaks just enough
HTTP/1.1 for our JSON API and the naive baseline (Content-Length or chunked bodies), on
127.0.0.1 only.
"""

import asyncio
import json
import math
import time
from collections import deque
from typing import Any


class HTTPError(Exception):
    pass


IDLE_REUSE_S = 3.0  # uvicorn closes keep-alive connections idle for 5 s: never race that


class _Conn:
    __slots__ = ("reader", "writer", "used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()

    def close(self) -> None:
        self.writer.close()


class RawClient:
    """Pool of keep-alive connections to one host:port; `max_conns` bounds open sockets."""

    def __init__(self, host: str, port: int, max_conns: int = 256, timeout: float = 60.0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the bench only talks to the loopback interface")
        self.host, self.port, self.timeout = host, port, timeout
        self.idle: deque[_Conn] = deque()
        self.slots = asyncio.Semaphore(max_conns)
        self.host_header = f"{host}:{port}".encode()

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**24)
        return _Conn(reader, writer)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        async with self.slots:
            for attempt in range(2):
                conn = self._idle_conn() if attempt == 0 else None
                if conn is None:
                    conn = await self._open()
                try:
                    status, data, keep = await asyncio.wait_for(
                        self._exchange(conn, method, path, body, headers), self.timeout
                    )
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                    conn.close()
                    if attempt:  # a stale keep-alive socket gets one retry on a fresh one
                        raise HTTPError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                    continue
                except BaseException:
                    conn.close()
                    raise
                if keep:
                    conn.used = time.monotonic()
                    self.idle.append(conn)
                else:
                    conn.close()
                return status, data
        raise HTTPError("unreachable")

    def _idle_conn(self) -> _Conn | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.used < IDLE_REUSE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _exchange(
        self,
        conn: _Conn,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str] | None,
    ) -> tuple[int, bytes, bool]:
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self.host_header]
        if body is not None:
            lines.append(b"Content-Type: application/json")
            lines.append(b"Content-Length: " + str(len(body)).encode())
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}".encode())
        conn.writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        head = await conn.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked, keep = None, False, True
        for line in header_lines:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if chunked:
            parts = []
            while True:
                size = int((await conn.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await conn.reader.readuntil(b"\r\n")
                    break
                parts.append(await conn.reader.readexactly(size))
                await conn.reader.readexactly(2)
            data = b"".join(parts)
        elif length is not None:
            data = await conn.reader.readexactly(length)
        else:
            data = await conn.reader.read()
            keep = False
        return status, data, keep

    async def json(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = None if payload is None else json.dumps(payload).encode()
        status, data = await self.request(method, path, body)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode(errors="replace")

    async def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: list[float]) -> dict[str, float | None]:
    """p50/p99/max in milliseconds of a list of durations in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else None,
        "n": len(ms),
    }
