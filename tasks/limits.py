"""Run-time limits: a node's output rows (list items) and encoded bytes (a bounded estimate),
and the rows, columns and pages of the files the input nodes parse (`FileLimits`).

`check_output` runs once after every handler returns (tasks/run_node.py). Counting rows is
`len()`; the byte estimate walks at most `SAMPLE` items of any list or object and scales the sum
up, so it costs about the same for ten rows and for a million.
"""

import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from config import Settings
from errors import NodeConfigError, NodeExecutionError

logger = logging.getLogger(__name__)

SAMPLE = 1000
"""Items of one list/object measured exactly; beyond that, an even sample is scaled up."""
_MAX_DEPTH = 64


def output_rows(output: Any) -> int:
    """Rows of a node output: the items of a list, else 1 (0 for null)."""
    if isinstance(output, list):
        return len(output)
    return 0 if output is None else 1


def _picks(size: int) -> range:
    """An even sample of `SAMPLE` indices out of `size`, starting at a random offset."""
    step = size // SAMPLE
    return range(random.randrange(step), size, step)


def estimate_bytes(value: Any, budget: int, depth: int = 0) -> int:
    """About the length of `value` encoded as JSON; the walk stops once the sum exceeds
    `budget` (the answer is then some number above it)."""
    if isinstance(value, str):
        return (len(value) if value.isascii() else 2 * len(value)) + 2
    if value is None or isinstance(value, bool | float):
        return 5 if not isinstance(value, float) else 12
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if depth >= _MAX_DEPTH or not isinstance(value, list | tuple | dict):
        return 16
    size = len(value)
    if size == 0:
        return 2
    is_map = isinstance(value, dict)
    items: Any = value.items() if isinstance(value, dict) else value
    if size > SAMPLE:
        seq = list(items) if is_map else value
        items = [seq[i] for i in _picks(size)]
    total = 0
    for item in items:
        if is_map:
            key, item = item
            total += len(str(key)) + 4
        total += estimate_bytes(item, budget - total, depth + 1) + 1
        if total > budget:
            break
    if size > SAMPLE:
        total = total * size // max(1, len(items))
    return total + 2


def check_output(result: Any, settings: Settings) -> None:
    """Raise a NodeExecutionError naming the limit when the envelope's `outputData` has more
    rows than MAX_NODE_OUTPUT_ROWS or (estimated) more bytes than MAX_NODE_OUTPUT_BYTES."""
    if not isinstance(result, dict):
        return
    output = result.get("outputData")
    rows, max_rows = output_rows(output), settings.MAX_NODE_OUTPUT_ROWS
    if rows > max_rows:
        raise NodeExecutionError(
            f"Node output has {rows:,} rows, over the limit of {max_rows:,} (MAX_NODE_OUTPUT_ROWS)"
        )
    max_bytes = settings.MAX_NODE_OUTPUT_BYTES
    size = estimate_bytes(output, max_bytes)
    if size > max_bytes:
        raise NodeExecutionError(
            f"Node output is about {size:,} bytes, over the limit of {max_bytes:,} "
            "(MAX_NODE_OUTPUT_BYTES)"
        )


@dataclass(frozen=True)
class FileLimits:
    """Rows and columns of a spreadsheet/CSV file and pages of a PDF (settings MAX_FILE_ROWS,
    MAX_FILE_COLUMNS, MAX_PDF_PAGES)."""

    rows: int = 1_000_000
    columns: int = 1000
    pages: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> "FileLimits":
        return cls(settings.max_file_rows, settings.MAX_FILE_COLUMNS, settings.MAX_PDF_PAGES)

    def bounded(self, rows: Iterable[Sequence[Any]], field: str) -> Iterator[Sequence[Any]]:
        """`rows` (blank ones as `()`); a NodeConfigError naming the limit at the first row whose
        last non-empty cell is past `columns`, or past `rows` non-blank rows after the header."""
        count = 0
        for row in rows:
            end = len(row)
            while end and row[end - 1] == "":
                end -= 1
            if end == 0:
                yield ()
                continue
            if end > self.columns:
                raise NodeConfigError(
                    f"{field}: a row has {end:,} columns, over the limit of "
                    f"{self.columns:,} (MAX_FILE_COLUMNS)"
                )
            count += 1
            if count > self.rows + 1:
                raise NodeConfigError(
                    f"{field}: more than {self.rows:,} rows, over the limit (MAX_FILE_ROWS)"
                )
            yield row
