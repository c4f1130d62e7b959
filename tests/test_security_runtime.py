"""Issue 9, run-time limits: node output rows/bytes, http bodies (real local server),
spreadsheet/CSV/PDF files, chart rendering time. Each hostile case ends as a node error naming
its limit, quickly and without the memory the attack asks for."""

import asyncio
import base64
import gzip
import io
import re
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from database.interfaces import Checkpoint
from errors import NodeError
from flows.engine import Job, execute
from flows.graph import build_plan, parse_workflow
from models import NodeDef
from tasks.context import Resources, open_resources
from tasks.limits import estimate_bytes
from tasks.registry import rules_of
from tasks.run_node import run_with_retries
from tests.conftest import CallNode, MakeCtx, make_settings

MakeResources = Callable[..., Resources]


async def run_node(
    make_ctx: MakeCtx, resources: Resources, type_: str, config: dict[str, Any], data: Any = None
) -> Any:
    node = NodeDef.model_validate({"id": "n1", "type": type_, "config": config})
    return await run_with_retries(node, data, make_ctx(type_, resources=resources))


# -- 1. rows and bytes one node may output ----------------------------------------------------

ROWS = [{"id": i, "name": f"row {i}", "city": "Madrid"} for i in range(5000)]
OUTPUT_CASES = [
    # (label, settings, output, error or None)
    ("rows at the limit", {"MAX_NODE_OUTPUT_ROWS": 100}, [1] * 100, None),
    ("rows over the limit", {"MAX_NODE_OUTPUT_ROWS": 100}, [1] * 101, "MAX_NODE_OUTPUT_ROWS"),
    ("one huge string", {"MAX_NODE_OUTPUT_BYTES": 4096}, {"text": "x" * 5000}, "OUTPUT_BYTES"),
    ("many small rows", {"MAX_NODE_OUTPUT_BYTES": 100_000}, ROWS, "MAX_NODE_OUTPUT_BYTES"),
    ("many small rows, fits", {"MAX_NODE_OUTPUT_BYTES": 400_000}, ROWS, None),
    ("nested huge list", {"MAX_NODE_OUTPUT_BYTES": 4096}, {"a": [["y" * 10] * 2000]}, "BYTES"),
]


@pytest.mark.parametrize(
    ("settings", "output", "error"), [c[1:] for c in OUTPUT_CASES], ids=[c[0] for c in OUTPUT_CASES]
)
async def test_node_output_limits(
    make_ctx: MakeCtx,
    make_resources: MakeResources,
    settings: dict[str, Any],
    output: Any,
    error: str | None,
) -> None:
    resources = make_resources(**settings)
    if error is None:
        result = await run_node(make_ctx, resources, "output", {}, output)
        assert result["outputData"] is output
        return
    with pytest.raises(NodeError, match=error) as info:
        await run_node(make_ctx, resources, "output", {}, output)
    assert "over the limit" in str(info.value) and not info.value.retryable


def test_byte_estimate_is_close_and_cheap() -> None:
    from jsonutil import dump_json

    rows = ROWS * 200  # a million rows
    started = time.perf_counter()
    estimate = estimate_bytes(rows, 10**12)
    assert time.perf_counter() - started < 0.5
    exact = len(dump_json(ROWS)) * 200
    assert 0.8 * exact < estimate < 1.25 * exact


class Recorder:
    async def checkpoint(self, execution_id: str, checkpoint: Checkpoint) -> bool:
        return True


@pytest.mark.parametrize("limit", [1000, 1_000_000])
async def test_a_doubling_chain_stops_at_the_row_limit(
    make_resources: MakeResources, limit: int
) -> None:
    """Two parallel connections between each pair of nodes: every step doubles its rows."""
    steps = 40  # 10 * 2**40 rows if nothing stopped it
    nodes = [{"id": "n0", "type": "webhook", "config": {}}]
    edges = []
    for i in range(1, steps + 1):
        nodes.append({"id": f"n{i}", "type": "output", "config": {}})
        for copy in ("a", "b"):
            edges.append({"id": f"e{i}{copy}", "fromNodeId": f"n{i - 1}", "toNodeId": f"n{i}"})
    plan = build_plan(parse_workflow({"nodes": nodes, "connections": edges}), rules_of)
    resources = make_resources(MAX_NODE_OUTPUT_ROWS=limit)
    job = Job("e1", None, None, {"_webhookData": [0] * 10}, plan, resources)
    started = time.perf_counter()
    result = await execute(job, Recorder(), run_with_retries)
    assert time.perf_counter() - started < 60
    assert result.status == "failed"
    failed = [nid for nid, r in result.results.items() if r.get("success") is False]
    stop = next(i for i in range(steps) if 10 * 2**i > limit)
    assert failed == [f"n{stop}"]
    assert "MAX_NODE_OUTPUT_ROWS" in str(result.results[f"n{stop}"]["error"])


# -- 2. http response bodies --------------------------------------------------------------------


class BodyServer:
    """A raw HTTP server answering every request with the body kind named by its path."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> "BodyServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        kind, size = request.split(b" ")[1].decode().strip("/").split("/")
        count, sent = int(size), 0
        try:
            if kind == "gzip":
                body = gzip.compress(b"[" + b"0," * count + b"0]")
                head = f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n"
                writer.write(f"HTTP/1.1 200 OK\r\n{head}Connection: close\r\n\r\n".encode() + body)
                sent = len(body)
            elif kind == "length":
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {count}\r\nConnection: close\r\n\r\n"
                writer.write(head.encode())
                while sent < count:
                    chunk = b"a" * min(65536, count - sent)
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
            else:  # chunked, no declared length
                head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                writer.write(head.encode())
                while sent < count:
                    writer.write(b"10000\r\n" + b"a" * 65536 + b"\r\n")
                    sent += 65536
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.sent[kind] = sent
            writer.close()


@pytest.fixture
async def body_server() -> AsyncIterator[BodyServer]:
    server = await BodyServer().start()
    yield server
    assert server.server is not None
    server.server.close()


MB = 1024 * 1024
HTTP_CASES = [
    # (label, path, limit, error expected)
    ("declared length over the limit", "length/20971520", MB, True),
    ("endless chunked body", "chunked/10737418240", MB, True),  # 10 GB offered
    ("gzip bomb", "gzip/5000000", MB, True),  # 10 MB decoded from ~10 kB
    ("body at the limit", "length/1048576", MB, False),
]


@pytest.mark.parametrize(
    ("path", "limit", "fails"), [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES]
)
async def test_http_response_body_limit(
    make_ctx: MakeCtx,
    body_server: BodyServer,
    path: str,
    limit: int,
    fails: bool,
) -> None:
    resources = open_resources(make_settings(HTTP_MAX_RESPONSE_BYTES=limit))  # real client
    try:
        await http_case(make_ctx, resources, body_server, path, limit, fails)
    finally:
        await resources.aclose()


async def http_case(
    make_ctx: MakeCtx,
    resources: Resources,
    body_server: BodyServer,
    path: str,
    limit: int,
    fails: bool,
) -> None:
    config = {"httpUrl": f"{body_server.url}/{path}"}
    if not fails:
        result = await run_node(make_ctx, resources, "http", config)
        assert result["outputData"] == {"response": "a" * limit}
        return
    started = time.perf_counter()
    with pytest.raises(NodeError, match="HTTP_MAX_RESPONSE_BYTES") as info:
        await run_node(make_ctx, resources, "http", config)
    assert time.perf_counter() - started < 20
    assert info.value.attempts == 1  # not retried
    await asyncio.sleep(0.1)
    assert body_server.sent.get(path.split("/")[0], 0) < 100 * MB  # cut, not read to the end


# -- 3. spreadsheets, CSV and PDF ---------------------------------------------------------------


def xlsx(rows: list[list[Any]], dimension: str | None = None) -> bytes:
    """A small workbook; `dimension` rewrites the sheet's declared `<dimension ref>`."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    if dimension is None:
        return buffer.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = re.sub(
                    rb'<dimension ref="[^"]*"', f'<dimension ref="{dimension}"'.encode(), data
                )
                assert dimension.encode() in data
            dst.writestr(item, data)
    return out.getvalue()


def pdf(pages: int) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=200, height=200)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


HEADER: list[list[Any]] = [["name", "value"]]
WIDE: list[list[Any]] = [["name", *([""] * 1000), "far"], ["a", *([""] * 1000), 1]]
FILE_CASES = [
    # (label, node type, config, settings, error or expected row count)
    (
        "declared dimension A1:XFD1048576 holding four cells",
        "excelInput",
        {"fileContent": b64(xlsx([*HEADER, ["a", 1]], "A1:XFD1048576")), "fileName": "x.xlsx"},
        {},
        1,
    ),
    (
        "blank rows are skipped",
        "excelInput",
        {
            "fileContent": b64(xlsx([*HEADER, [None, None], ["a", 1], [], ["b", 2]])),
            "fileType": "xlsx",
        },
        {"MAX_FILE_ROWS": 2},
        2,
    ),
    (
        "xlsx rows over the limit",
        "excelInput",
        {
            "fileContent": b64(xlsx([*HEADER, *[[f"r{i}", i] for i in range(3)]])),
            "fileType": "xlsx",
        },
        {"MAX_FILE_ROWS": 2},
        "MAX_FILE_ROWS",
    ),
    (
        "xlsx rows default to the node output limit",
        "excelInput",
        {
            "fileContent": b64(xlsx([*HEADER, *[[f"r{i}", i] for i in range(3)]])),
            "fileType": "xlsx",
        },
        {"MAX_NODE_OUTPUT_ROWS": 2},
        "MAX_FILE_ROWS",
    ),
    (
        "xlsx columns over the limit",
        "excelInput",
        {"fileContent": b64(xlsx(WIDE)), "fileType": "xlsx"},
        {},
        "MAX_FILE_COLUMNS",
    ),
    (
        "csv columns over the limit",
        "excelInput",
        {"fileContent": b64(b"a" + b",x" * 1000 + b"\n1,2\n"), "fileType": "csv"},
        {},
        "MAX_FILE_COLUMNS",
    ),
    (
        "csv columns at the limit",
        "excelInput",
        {"fileContent": b64(b"a" + b",x" * 999 + b"\n1,2\n"), "fileType": "csv"},
        {},
        1,
    ),
    (
        "csv rows over the limit",
        "excelInput",
        {"fileContent": b64(b"a,b\n" + b"1,2\n" * 6), "fileType": "csv"},
        {"MAX_FILE_ROWS": 5},
        "MAX_FILE_ROWS",
    ),
    (
        "pdf pages over the limit",
        "pdfInput",
        {"fileContent": b64(pdf(3))},
        {"MAX_PDF_PAGES": 2},
        "MAX_PDF_PAGES",
    ),
    ("pdf pages at the limit", "pdfInput", {"fileContent": b64(pdf(2))}, {"MAX_PDF_PAGES": 2}, 2),
]


@pytest.mark.parametrize(
    ("type_", "config", "settings", "expected"),
    [c[1:] for c in FILE_CASES],
    ids=[c[0] for c in FILE_CASES],
)
async def test_file_limits(
    make_ctx: MakeCtx,
    make_resources: MakeResources,
    type_: str,
    config: dict[str, Any],
    settings: dict[str, Any],
    expected: str | int,
) -> None:
    resources = make_resources(**settings)
    started = time.perf_counter()
    if isinstance(expected, str):
        with pytest.raises(NodeError, match=expected):
            await run_node(make_ctx, resources, type_, config)
    else:
        result = await run_node(make_ctx, resources, type_, config)
        count = result["outputData"]["pages"] if type_ == "pdfInput" else result["rowCount"]
        assert count == expected
    assert time.perf_counter() - started < 5


# -- 4. chart rendering time --------------------------------------------------------------------

POINTS = [{"x": i, "y": (i * 37) % 101} for i in range(5000)]
CHART_CASES = [
    # (label, timeout, error expected)
    ("a slow render is cut at the limit", 0.001, True),
    ("a render within the limit", 10.0, False),
]


@pytest.mark.parametrize(
    ("timeout", "fails"), [c[1:] for c in CHART_CASES], ids=[c[0] for c in CHART_CASES]
)
async def test_chart_rendering_time_is_bounded(
    call_node: CallNode,
    make_resources: MakeResources,
    tmp_path: Path,
    timeout: float,
    fails: bool,
) -> None:
    resources = make_resources(CHART_RENDER_TIMEOUT_S=timeout, IMAGE_DIR=str(tmp_path))
    widget = {"type": "line", "xAxisKey": "x", "dataKey": "y", "data": POINTS}
    config = {"generatedWidget": widget, "renderImage": True}
    if fails:
        with pytest.raises(NodeError, match="CHART_RENDER_TIMEOUT_S"):
            await call_node("dataVisualization", config, None, resources=resources)
        await asyncio.sleep(3)  # the abandoned drawing finishes and stores nothing
        assert list(tmp_path.iterdir()) == []
    else:
        result = await call_node("dataVisualization", config, None, resources=resources)
        assert result["image"]["bytes"] > 0
