"""The excelInput node type (inline rows, or an .xlsx/.csv file) and the file sources of every
file-input node (a path under UPLOAD_DIR, or base64 content; see also `tasks.pdf`). Files are
parsed in a worker thread, streaming rows into one list."""

import base64
import binascii
import csv
import datetime as dt
import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ConfigDict

from errors import NodeConfigError
from tasks.context import RunContext
from tasks.cpu import run_cpu
from tasks.limits import FileLimits
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import js_str

_PLAIN_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?")
_MAX_EXACT_DIGITS = 15
_XLSX_TYPES = {"xlsx": "xlsx", "xlsm": "xlsx"}
_CSV_TYPES = {"csv": None, "tsv": "\t", "txt": None}
GCS_UNSUPPORTED = (
    "gcsPath: files stored in Google Cloud Storage are not available to this "
    "service; give filePath or fileContent instead"
)


@dataclass(frozen=True)
class FileSource:
    """A file named by `filePath` (under UPLOAD_DIR) or decoded from base64 `fileContent`."""

    kind: str  # "file" | "base64"
    field: str
    name: str | None
    path: Path | None = None
    content: bytes | None = None

    def open(self) -> BinaryIO:
        return self.path.open("rb") if self.path is not None else io.BytesIO(self.content or b"")

    def head(self, size: int = 8) -> bytes:
        with self.open() as handle:
            return handle.read(size)


def upload_root(ctx: RunContext) -> Path:
    """Where a run's `filePath` files live: `UPLOAD_DIR/<org>` for a run with a (data)
    organization, UPLOAD_DIR itself for a run without one."""
    root = Path(ctx.settings.UPLOAD_DIR).expanduser().resolve()
    org = ctx.organization_id
    if org is None:
        return root
    if org in ("", ".", "..") or "/" in org or "\\" in org or "\0" in org:
        raise NodeConfigError("filePath cannot be used: the organization id is not a folder name")
    return root / org


def _upload_path(ctx: RunContext, value: str) -> Path:
    root = upload_root(ctx)
    try:
        path = (root / value).resolve()
    except (OSError, ValueError):
        raise NodeConfigError(f"filePath {value!r} is not a valid path") from None
    if not path.is_relative_to(root):
        raise NodeConfigError(f"filePath {value!r} is outside the upload folder (UPLOAD_DIR)")
    if ctx.organization_id is None and path.parent != root:  # subfolders are the orgs'
        raise NodeConfigError(
            f"filePath {value!r} is in a subfolder of UPLOAD_DIR: a run without an organization "
            "reads only files directly in UPLOAD_DIR"
        )
    if not path.is_file():
        raise NodeConfigError(f"filePath {value!r} does not exist in the upload folder")
    return path


def _decode_base64(value: str) -> bytes:
    text = value.strip()
    if text.startswith("data:") and "," in text:  # a data: URL as browsers produce
        text = text.split(",", 1)[1]
    try:
        content = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise NodeConfigError("fileContent is not valid base64") from None
    if not content:
        raise NodeConfigError("fileContent is empty")
    return content


def file_source(
    ctx: RunContext, file_path: str | None, file_content: str | None, file_name: str | None
) -> FileSource | None:
    """`filePath` wins over `fileContent`; None when neither is configured."""
    if file_path:
        path = _upload_path(ctx, file_path)
        return FileSource("file", "filePath", path.name, path=path)
    if file_content:
        return FileSource("base64", "fileContent", file_name, content=_decode_base64(file_content))
    return None


class ExcelInputConfig(NodeConfig):
    """Open model: the editor stores more keys (headers, rowCount, useGCS, previewData)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    fileName: str | None = None
    parsedData: list[Any] | None = None
    filePath: str | None = None
    fileContent: str | None = None
    fileType: str | None = None
    sheetName: str | None = None
    keepText: bool = False
    delimiter: str | None = None
    encoding: str | None = None
    gcsPath: str | None = None


def _number(value: int | float) -> int | float:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _xlsx_value(cell: Any) -> Any:
    """Typed cell value: numbers stay numbers (unless formatted as text '@'), dates become ISO
    strings (date only at midnight), empty cells ""."""
    value = cell.value
    if value is None:
        return ""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return js_str(value) if cell.number_format == "@" else _number(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return js_str(value)


def csv_value(text: str) -> Any:
    """A plain decimal ("42", "-1.5", "2.0" → 2; no leading zeros, exponents or more than 15
    digits) becomes a number; everything else stays text."""
    stripped = text.strip()
    if (
        _PLAIN_NUMBER.fullmatch(stripped)
        and sum(c.isdigit() for c in stripped) <= _MAX_EXACT_DIGITS
    ):
        return _number(float(stripped)) if "." in stripped else int(stripped)
    return text


def _header_names(row: Sequence[Any], start: int = 0, seen: set[str] | None = None) -> list[str]:
    """Header texts; empty ones become `Column<n>`, repeats get `_2`, `_3`, …"""
    seen = set() if seen is None else seen
    names = []
    for index, value in enumerate(row, start + 1):
        base = js_str(value).strip() if value != "" else f"Column{index}"
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(name)
    return names


def rows_to_records(
    rows: Iterable[Sequence[Any]],
    convert: Callable[[Any], Any] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Headers from the first non-blank row; one dict per later non-blank row (missing cells "",
    extra non-empty cells get new `Column<n>` headers); `convert` types the data cells."""
    headers: list[str] | None = None
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for row in rows:
        if all(v == "" for v in row):
            continue
        if headers is None:
            headers = _header_names(row, seen=seen)
            continue
        while len(row) > len(headers) and row[-1] == "":
            row = row[:-1]
        if len(row) > len(headers):
            headers += _header_names([""] * (len(row) - len(headers)), len(headers), seen)
        cells = row if convert is None else [convert(v) for v in row]
        record = dict(zip(headers, cells, strict=False))
        for name in headers[len(cells) :]:
            record[name] = ""
        out.append(record)
    return headers or [], out


def _xlsx_rows(source: FileSource, sheet_name: str | None) -> Iterator[list[Any]]:
    import openpyxl

    with source.open() as handle:
        try:
            workbook = openpyxl.load_workbook(handle, read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not an xlsx file"
            raise NodeConfigError(
                f"{source.field} is not a readable .xlsx file ({type(exc).__name__})"
            ) from None
        try:
            if sheet_name and sheet_name not in workbook.sheetnames:
                raise NodeConfigError(
                    f"sheetName {sheet_name!r} not found; the workbook has "
                    f"{', '.join(map(repr, workbook.sheetnames))}"
                )
            sheet = workbook[sheet_name] if sheet_name else workbook.worksheets[0]
            sheet.reset_dimensions()  # a declared A1:XFD1048576 must not pad a billion cells
            for row in sheet.iter_rows():
                yield [_xlsx_value(cell) for cell in row]
        finally:
            workbook.close()


def _csv_rows(source: FileSource, encoding: str, delimiter: str | None) -> Iterator[list[str]]:
    with source.open() as raw, io.TextIOWrapper(raw, encoding=encoding, newline="") as text:
        first = text.readline()
        if delimiter is None:
            counts = {d: first.count(d) for d in (",", ";", "\t", "|")}
            best = max(counts, key=lambda d: counts[d])
            delimiter = best if counts[best] else ","
        yield from csv.reader(itertools.chain([first], text), delimiter=delimiter)


def _table_type(config: ExcelInputConfig, source: FileSource) -> tuple[str, str | None]:
    """("xlsx", None) or ("csv", default delimiter) from fileType, the file name, or the bytes."""
    if config.fileType:
        wanted = config.fileType.strip().lower().lstrip(".")
        field = "fileType"
    else:
        wanted = Path(source.name or "").suffix.lower().lstrip(".")
        field = source.field
    if wanted in _XLSX_TYPES:
        return "xlsx", None
    if wanted in _CSV_TYPES:
        return "csv", _CSV_TYPES[wanted]
    if wanted == "xls":
        raise NodeConfigError(
            f"{field}: legacy .xls files are not supported; save as .xlsx or .csv"
        )
    if config.fileType:
        raise NodeConfigError(f"Invalid fileType {config.fileType!r}: use xlsx or csv")
    return ("xlsx", None) if source.head(4) == b"PK\x03\x04" else ("csv", None)


def _delimiter(value: str | None) -> str | None:
    if not value:
        return None
    value = {"\\t": "\t", "tab": "\t"}.get(value.lower(), value)
    if len(value) != 1:
        raise NodeConfigError(f'Invalid delimiter {value!r}: use one character (or "tab")')
    return value


def parse_table(
    config: ExcelInputConfig, source: FileSource, limits: FileLimits
) -> tuple[list[str], list[dict[str, Any]]]:
    """Headers and records of an .xlsx or .csv source within `limits` (blocking: run it in a
    thread)."""
    kind, default_delimiter = _table_type(config, source)
    if kind == "xlsx":
        return rows_to_records(limits.bounded(_xlsx_rows(source, config.sheetName), source.field))
    delimiter = _delimiter(config.delimiter) or default_delimiter
    convert = None if config.keepText else csv_value
    encodings = [config.encoding] if config.encoding else ["utf-8-sig", "cp1252"]
    for encoding in encodings:
        try:
            rows = limits.bounded(_csv_rows(source, encoding, delimiter), source.field)
            return rows_to_records(rows, convert)
        except LookupError:
            raise NodeConfigError(f"Invalid encoding {encoding!r}") from None
        except UnicodeDecodeError:
            continue
        except csv.Error as exc:
            raise NodeConfigError(f"{source.field} is not a readable CSV file ({exc})") from None
    raise NodeConfigError(f"{source.field} is not text in encoding {encodings[-1]!r}; set encoding")


def load_table(
    ctx: RunContext, config: ExcelInputConfig, limits: FileLimits
) -> tuple[FileSource, list[str], list[dict[str, Any]]] | None:
    """The configured file (decoded) and its headers and records; None when no file is
    configured (blocking: run it in a thread)."""
    source = file_source(ctx, config.filePath, config.fileContent, config.fileName)
    if source is None:
        return None
    return (source, *parse_table(config, source, limits))


@node("excelInput", config=ExcelInputConfig)
async def excel_input(config: ExcelInputConfig, data: Any, ctx: RunContext) -> Envelope:
    """A file (`filePath`, else base64 `fileContent`) wins over the editor's inline `parsedData`
    (which the editor truncates to 100 rows)."""
    loaded = None
    if config.filePath or config.fileContent:
        loaded = await run_cpu(load_table, ctx, config, FileLimits.from_settings(ctx.settings))
    if loaded is not None:
        source, headers, rows = loaded
        name = source.name or "base64 content"
        extras: dict[str, Any] = {"headers": headers}
        if config.sheetName:
            extras["sheetName"] = config.sheetName
        return envelope(
            f"Loaded {len(rows)} rows from {name}",
            rows,
            rowCount=len(rows),
            source=source.kind,
            fileName=source.name,
            **extras,
        )
    if config.parsedData is None:
        if config.gcsPath:
            raise NodeConfigError(GCS_UNSUPPORTED)
        raise NodeConfigError("No data configured for Excel/CSV node. Please upload a file.")
    rows = config.parsedData
    name = config.fileName or "inline data"
    return envelope(
        f"Loaded {len(rows)} rows from {name}",
        rows,
        rowCount=len(rows),
        source="inline",
        fileName=config.fileName,
    )
