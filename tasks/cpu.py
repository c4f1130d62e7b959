"""CPU work on user data, kept off the worker's event loop so leases, cancels and the other
executions go on while a big input is processed (issue 9: no node holds the loop for more than
about 100 ms).

Two tools, for two kinds of work:

- `run_cpu(fn, *args, size=n)`: pure-Python work (a loop over rows) runs in a small thread pool
  of its own (`CPU_THREADS`) once `size` passes `INLINE_ROWS`; the interpreter hands the GIL back
  to the loop every few milliseconds. Smaller inputs run inline, where a thread hop would cost
  more than the work.
- `encode_json(value)`: `jsonutil.dump_json`, same text, but a big value is encoded in slices of
  about `SLICE_BYTES` with a pass through the loop between them. The C JSON encoder holds the GIL
  for a whole call, so a thread would not help; slicing does.
"""

import asyncio
import functools
import gc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from jsonutil import dump_json
from tasks.limits import estimate_bytes

CPU_THREADS = 4
"""Threads for CPU-heavy node work per worker process; more nodes wait for a free one."""
INLINE_ROWS = 2000
"""Inputs of at most this many rows (items) are processed inline, on the loop."""
SLICE_BYTES = 1 << 18
"""About how much JSON `encode_json` writes between two passes through the loop (~5 ms)."""
_MAX_DEPTH = 8

_pool: ThreadPoolExecutor | None = None
T = TypeVar("T")


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(CPU_THREADS, thread_name_prefix="wos-cpu")
    return _pool


async def run_cpu(fn: Callable[..., T], *args: Any, size: int | None = None) -> T:
    """`fn(*args)`: inline when `size` (rows or items of the input) is at most `INLINE_ROWS`,
    else (and always without a `size`) in the CPU thread pool. A cancelled caller stops
    waiting; the thread finishes `fn`."""
    if size is not None and size <= INLINE_ROWS:
        return fn(*args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), functools.partial(fn, *args))


def freeze_startup_heap() -> None:
    """Move every object alive now (modules, classes, clients: the process's startup heap) out
    of the garbage collector's sight. A full collection pauses every thread for as long as it
    takes to walk the heap; without these ~200,000 objects it walks only what the runs made."""
    gc.collect()
    gc.freeze()


async def encode_json(value: Any, redact: Callable[[str], str] | None = None) -> str:
    """`dump_json(value)`, encoded in slices with a pass through the event loop in between when
    `value` is big (lists and string-keyed objects are split; a single huge string is not).
    `redact` (e.g. `redact_url`) is applied to each slice: a slice is whole JSON values, so a
    pattern that never crosses a `"` finds what it would find in the whole text."""
    if estimate_bytes(value, SLICE_BYTES) <= SLICE_BYTES:
        text = dump_json(value)
        return text if redact is None else redact(text)
    writer = _Writer(redact)
    await writer.encode(value, 0)
    return "".join(writer.parts)


class _Writer:
    """The pieces of one `encode_json`, and the bytes written since the last pass through the
    loop."""

    def __init__(self, redact: Callable[[str], str] | None) -> None:
        self.parts: list[str] = []
        self.pending = 0
        self.redact = redact

    async def add(self, text: str) -> None:
        self.parts.append(text if self.redact is None else self.redact(text))
        self.pending += len(text)
        if self.pending >= SLICE_BYTES:
            self.pending = 0
            await asyncio.sleep(0)

    async def encode(self, value: Any, depth: int) -> None:
        size = estimate_bytes(value, SLICE_BYTES)
        if size <= SLICE_BYTES or depth >= _MAX_DEPTH:
            await self.add(dump_json(value))
        elif isinstance(value, list | tuple) or (
            isinstance(value, dict) and all(isinstance(k, str) for k in value)
        ):
            is_map = isinstance(value, dict)
            items: Any = list(value.items()) if isinstance(value, dict) else value
            step = max(1, SLICE_BYTES * len(items) // max(1, estimate_bytes(value, 1 << 62)))
            self.parts.append("{" if is_map else "[")
            for start in range(0, len(items), step):
                if start:
                    self.parts.append(", ")
                if step > 1:
                    chunk = items[start : start + step]
                    await self.add(dump_json(dict(chunk) if is_map else chunk)[1:-1])
                elif is_map:
                    await self.add(f"{dump_json(items[start][0])}: ")
                    await self.encode(items[start][1], depth + 1)
                else:
                    await self.encode(items[start], depth + 1)
            self.parts.append("}" if is_map else "]")
        else:
            await self.add(dump_json(value))
