"""The bench's local upstream: `GET|POST /delay/<ms>` answers `{"ok": true}` after <ms> ms.

Runs in its own process (so it never steals the service's event loop), on 127.0.0.1, with
keep-alive and no limit on concurrent connections. Usage:
    python -m bench.mockserver [--port 0]     # prints "READY <port>" once listening
"""

import argparse
import asyncio
import contextlib
import signal
import sys

BODY = b'{"ok":true}'


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request_line, *headers = head[:-4].split(b"\r\n")
            length, close = 0, False
            for line in headers:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            parts = request_line.split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            delay_ms = 0.0
            if path.startswith(b"/delay/"):
                with contextlib.suppress(ValueError):
                    delay_ms = float(path[7:].split(b"?")[0])
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(BODY)).encode()
                + b"\r\n\r\n"
                + BODY
            )
            await writer.drain()
            if close:
                return
    except ConnectionError:
        return
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.port))
    else:
        uvloop.run(main(args.port))
