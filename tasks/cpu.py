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
- `decode_json(data)`: `json.loads`, same value, but a big array (at the top, or in the top
  object) is decoded in runs of items of about `SLICE_BYTES`.
"""

import asyncio
import functools
import gc
import json
import re
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


_compact = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
"""How httpx encodes a request's `json=` body."""


async def encode_json(
    value: Any, redact: Callable[[str], str] | None = None, *, compact: bool = False
) -> str:
    """`dump_json(value)` (with `compact`: httpx's request encoding, no blanks, NaN refused),
    encoded in slices with a pass through the event loop in between when `value` is big (lists
    and string-keyed objects are split; a single huge string is not). `redact` (e.g.
    `redact_url`) is applied to each slice: a slice is whole JSON values, so a pattern that
    never crosses a `"` finds what it would find in the whole text."""
    dumps = _compact if compact else dump_json
    if estimate_bytes(value, SLICE_BYTES) <= SLICE_BYTES:
        text = dumps(value)
        return text if redact is None else redact(text)
    writer = _Writer(redact, dumps, "," if compact else ", ", ":" if compact else ": ")
    await writer.encode(value, 0)
    return "".join(writer.parts)


class _Writer:
    """The pieces of one `encode_json`, and the bytes written since the last pass through the
    loop."""

    def __init__(
        self,
        redact: Callable[[str], str] | None,
        dumps: Callable[[Any], str],
        item_separator: str,
        key_separator: str,
    ) -> None:
        self.parts: list[str] = []
        self.pending = 0
        self.redact, self.dumps = redact, dumps
        self.item_separator, self.key_separator = item_separator, key_separator

    async def add(self, text: str) -> None:
        self.parts.append(text if self.redact is None else self.redact(text))
        self.pending += len(text)
        if self.pending >= SLICE_BYTES:
            self.pending = 0
            await asyncio.sleep(0)

    async def encode(self, value: Any, depth: int) -> None:
        size = estimate_bytes(value, SLICE_BYTES)
        if size <= SLICE_BYTES or depth >= _MAX_DEPTH:
            await self.add(self.dumps(value))
        elif isinstance(value, list | tuple) or (
            isinstance(value, dict) and all(isinstance(k, str) for k in value)
        ):
            is_map = isinstance(value, dict)
            items: Any = list(value.items()) if isinstance(value, dict) else value
            step = max(1, SLICE_BYTES * len(items) // max(1, estimate_bytes(value, 1 << 62)))
            self.parts.append("{" if is_map else "[")
            for start in range(0, len(items), step):
                if start:
                    self.parts.append(self.item_separator)
                if step > 1:
                    chunk = items[start : start + step]
                    await self.add(self.dumps(dict(chunk) if is_map else chunk)[1:-1])
                elif is_map:
                    await self.add(f"{self.dumps(items[start][0])}{self.key_separator}")
                    await self.encode(items[start][1], depth + 1)
                else:
                    await self.encode(items[start], depth + 1)
            self.parts.append("}" if is_map else "]")
        else:
            await self.add(self.dumps(value))


_DECODER: Any = json.JSONDecoder()  # its `scan_once` decodes one value at an index
_BLANK = re.compile(r"[ \t\n\r]*")
_ITEM_END = re.compile(r"[}\]][ \t\n\r]*,")


def _skip(text: str, idx: int) -> int:
    """The index of the first non-blank character at or after `idx`."""
    match = _BLANK.match(text, idx)
    return match.end() if match else idx


async def decode_json(data: bytes | str) -> Any:
    """`json.loads(data)`; when `data` is big, the arrays at the top or in the top object are
    decoded a run of items at a time with a pass through the loop in between. A run ends at a
    comma found by text search and is kept only when `[run]` decodes: a comma inside a string
    or a nested value leaves the run unbalanced, so it cannot. Where no run decodes, items are
    decoded one at a time. Invalid JSON raises what `json.loads` raises."""
    if len(data) <= 4 * SLICE_BYTES:
        return json.loads(data)
    if isinstance(data, bytes):
        text = data.decode(json.detect_encoding(data), "surrogatepass")
    else:
        text = data
    if not text.startswith("\ufeff"):
        try:
            value, end = await _Reader(text).value(_skip(text, 0), 0)
            if _skip(text, end) == len(text):
                return value
        except (ValueError, StopIteration, IndexError):
            pass
    return json.loads(text)  # the exact error (or value) of the one-call decoder


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text

    async def value(self, idx: int, depth: int) -> tuple[Any, int]:
        first = self.text[idx : idx + 1]
        if first == "[" and depth <= 1:
            return await self.array(idx)
        if first == "{" and depth == 0:
            return await self.object(idx)
        item: tuple[Any, int] = _DECODER.scan_once(self.text, idx)
        return item

    async def object(self, idx: int) -> tuple[dict[str, Any], int]:
        text, out = self.text, dict[str, Any]()
        idx = _skip(text, idx + 1)
        if text[idx : idx + 1] == "}":
            return out, idx + 1
        while True:
            after_run = self.run(out, idx, "{}")
            await asyncio.sleep(0)
            if after_run != idx:
                idx = after_run
                continue
            end = idx + SLICE_BYTES  # no run decodes here: one member at a time for a while
            while idx < end:
                if text[idx : idx + 1] != '"':
                    raise ValueError("Expecting property name enclosed in double quotes")
                key, idx = json.decoder.scanstring(text, idx + 1)  # type: ignore[attr-defined]
                idx = _skip(text, idx)
                if text[idx : idx + 1] != ":":
                    raise ValueError("Expecting ':' delimiter")
                out[key], idx = await self.value(_skip(text, idx + 1), 1)
                idx = _skip(text, idx)
                if text[idx : idx + 1] == "}":
                    return out, idx + 1
                if text[idx : idx + 1] != ",":
                    raise ValueError("Expecting ',' delimiter")
                idx = _skip(text, idx + 1)

    async def array(self, idx: int) -> tuple[list[Any], int]:
        text, out = self.text, list[Any]()
        idx = _skip(text, idx + 1)
        if text[idx : idx + 1] == "]":
            return out, idx + 1
        while True:
            after_run = self.run(out, idx, "[]")
            await asyncio.sleep(0)
            if after_run != idx:
                idx = after_run
                continue
            end = idx + SLICE_BYTES  # no run decodes here: one item at a time for a while
            while idx < end:
                item, idx = _DECODER.scan_once(text, idx)
                out.append(item)
                idx = _skip(text, idx)
                if text[idx : idx + 1] == "]":
                    return out, idx + 1
                if text[idx : idx + 1] != ",":
                    raise ValueError("Expecting ',' delimiter")
                idx = _skip(text, idx + 1)

    def run(self, out: list[Any] | dict[str, Any], idx: int, brackets: str) -> int:
        """Decode the items (members) from `idx` up to a comma SLICE_BYTES to 2 x SLICE_BYTES on
        into `out` in one call; where the next one starts, or `idx` when no such run decodes."""
        text, start, stop = self.text, idx + SLICE_BYTES, idx + 2 * SLICE_BYTES
        after_bracket = _ITEM_END.search(text, start, stop)
        commas = [after_bracket.end() - 1] if after_bracket else []
        commas.append(text.find(",", start, stop))
        for comma in commas:
            if comma < 0:
                continue
            try:
                items = json.loads(f"{brackets[0]}{text[idx:comma]}{brackets[1]}")
            except ValueError:
                continue
            if isinstance(out, list):
                out.extend(items)
            else:
                out.update(items)
            return _skip(text, comma + 1)
        return idx
