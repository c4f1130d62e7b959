"""W4's load: N concurrent pollers GET /api/executions/{id} as fast as the API answers, in a
process of their own. Execution ids arrive on stdin, one a line; a line `STOP` (or EOF, or
--max-seconds) ends the run, and the stats are printed as `RESULT {json}`.

    python -m bench.poller --port P [--concurrency 50] [--max-seconds 300]
"""

import argparse
import asyncio
import json
import sys
import time

from bench.client import HTTPError, RawClient, summary_ms


async def main(port: int, concurrency: int, max_seconds: float) -> dict[str, object]:
    client = RawClient("127.0.0.1", port, max_conns=concurrency, timeout=30)
    ids: list[str] = []
    stop = asyncio.Event()
    have_ids = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def read_ids() -> None:
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "STOP":
                stop.set()
                return
            ids.append(line)
            have_ids.set()

    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors = 0

    async def poll(k: int) -> None:
        nonlocal errors
        i = k
        while not stop.is_set():
            eid = ids[i % len(ids)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                status, _ = await client.request("GET", f"/api/executions/{eid}")
            except (TimeoutError, HTTPError, OSError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            codes[status] = codes.get(status, 0) + 1

    reading = asyncio.create_task(read_ids())
    await asyncio.wait(
        [asyncio.ensure_future(have_ids.wait()), reading],
        timeout=max_seconds,
        return_when=asyncio.FIRST_COMPLETED,
    )
    t0 = time.perf_counter()
    if ids:
        pollers = [asyncio.create_task(poll(k)) for k in range(concurrency)]
        await asyncio.wait([asyncio.ensure_future(stop.wait())], timeout=max_seconds)
        stop.set()
        await asyncio.wait(pollers, timeout=35)
    elapsed = time.perf_counter() - t0
    reading.cancel()
    await client.close()
    return {
        "elapsed": elapsed,
        "requests": len(latencies),
        "errors": errors,
        "codes": codes,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": summary_ms(latencies),
        "concurrency": concurrency,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main(args.port, args.concurrency, args.max_seconds))
    else:
        result = uvloop.run(main(args.port, args.concurrency, args.max_seconds))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
