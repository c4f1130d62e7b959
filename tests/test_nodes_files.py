"""excelInput and pdfInput on real files (contract §4.13, §4.14): .xlsx built with openpyxl,
.csv with the csv module, PDFs written by hand; given by path under UPLOAD_DIR or as base64."""

import base64
import csv
import datetime as dt
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from errors import NodeConfigError
from tasks.context import Resources
from tasks.inputs import csv_value, rows_to_records
from tests.conftest import CallNode, MakeResources

HEADER = ["id", "name", "amount", "ratio", "day", "moment", "code", "empty", "flag", "as_text"]


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    """The run's organization folder (`make_ctx` runs as org_test) under UPLOAD_DIR."""
    folder = tmp_path / "uploads" / "org_test"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def res(make_resources: MakeResources, uploads: Path) -> Resources:
    return make_resources(UPLOAD_DIR=str(uploads.parent))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_xlsx(path: Path, sheets: dict[str, list[list[Any]]]) -> Path:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    if "Data" in sheets:  # a number the sheet formats as text stays text
        workbook["Data"]["J2"].number_format = "@"
    workbook.save(path)
    return path


XLSX_ROWS = [
    HEADER,
    [
        1,
        "Ana",
        120.0,
        0.25,
        dt.datetime(2024, 1, 15),
        dt.datetime(2024, 1, 15, 10, 30),
        "00123",
        None,
        True,
        4711,
    ],
    [None, None, None, None, None, None, None, None, None, None],  # blank row: skipped
    [
        2,
        "Luis",
        7,
        1.5,
        dt.date(2024, 2, 1),
        dt.datetime(2024, 2, 1, 0, 0, 5),
        "A-1",
        None,
        False,
        "x",
    ],
]
XLSX_RECORDS = [
    {
        "id": 1,
        "name": "Ana",
        "amount": 120,
        "ratio": 0.25,
        "day": "2024-01-15",
        "moment": "2024-01-15T10:30:00",
        "code": "00123",
        "empty": "",
        "flag": True,
        "as_text": "4711",
    },
    {
        "id": 2,
        "name": "Luis",
        "amount": 7,
        "ratio": 1.5,
        "day": "2024-02-01",
        "moment": "2024-02-01T00:00:05",
        "code": "A-1",
        "empty": "",
        "flag": False,
        "as_text": "x",
    },
]
CSV_TEXT = (
    "id,name,amount,code,empty,big,negative,spaced\n"
    "1,Ana,12.50,00123,,12345678901234567,-3,  7 \n"
    "\n"
    "2,Luis,1e5,0.5,,x,-0.25,a b\n"
)
CSV_TYPED = [
    {
        "id": 1,
        "name": "Ana",
        "amount": 12.5,
        "code": "00123",
        "empty": "",
        "big": "12345678901234567",
        "negative": -3,
        "spaced": 7,
    },
    {
        "id": 2,
        "name": "Luis",
        "amount": "1e5",
        "code": 0.5,
        "empty": "",
        "big": "x",
        "negative": -0.25,
        "spaced": "a b",
    },
]


async def test_excel_input_reads_xlsx_by_path_with_typed_values(
    call_node: CallNode, res: Resources, uploads: Path
) -> None:
    write_xlsx(uploads / "sales.xlsx", {"Data": XLSX_ROWS})
    result = await call_node("excelInput", {"filePath": "sales.xlsx"}, resources=res)
    assert result["outputData"] == XLSX_RECORDS
    assert (result["rowCount"], result["source"], result["fileName"]) == (2, "file", "sales.xlsx")
    assert result["headers"] == HEADER


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, [{"k": "first"}]),
        ({"sheetName": "Second"}, [{"k": "second"}]),
    ],
)
async def test_excel_input_sheet_selection(
    call_node: CallNode, res: Resources, uploads: Path, config: dict[str, Any], expected: list[Any]
) -> None:
    write_xlsx(uploads / "two.xlsx", {"First": [["k"], ["first"]], "Second": [["k"], ["second"]]})
    result = await call_node("excelInput", {"filePath": "two.xlsx", **config}, resources=res)
    assert result["outputData"] == expected


@pytest.mark.parametrize(
    ("text", "config", "expected"),
    [
        (CSV_TEXT, {}, CSV_TYPED),
        ("a,b\n1,2\n", {"keepText": True}, [{"a": "1", "b": "2"}]),
        ("a;b\n1;x\n", {}, [{"a": 1, "b": "x"}]),  # delimiter detected from the header
        ("a|b\n1|2,5\n", {"delimiter": "|"}, [{"a": 1, "b": "2,5"}]),
        ("a\tb\n1\t2\n", {"delimiter": "tab"}, [{"a": 1, "b": 2}]),
        ("a,,a\n1,2,3\n", {}, [{"a": 1, "Column2": 2, "a_2": 3}]),  # empty + repeated headers
        (
            "a,b\n1\n2,3,4\n",
            {},
            [{"a": 1, "b": ""}, {"a": 2, "b": 3, "Column3": 4}],
        ),  # short and long rows
        (
            'name,note\n"Doe, Jane","line 1\nline 2"\n',
            {},
            [{"name": "Doe, Jane", "note": "line 1\nline 2"}],
        ),
        ("\ufeffid,v\n1,2\n", {}, [{"id": 1, "v": 2}]),  # UTF-8 BOM
        ("a,b\n", {}, []),
        ("", {}, []),
    ],
)
async def test_excel_input_reads_csv_by_path(
    call_node: CallNode,
    res: Resources,
    uploads: Path,
    text: str,
    config: dict[str, Any],
    expected: list[Any],
) -> None:
    (uploads / "data.csv").write_text(text, encoding="utf-8", newline="")
    result = await call_node("excelInput", {"filePath": "data.csv", **config}, resources=res)
    assert result["outputData"] == expected
    assert result["rowCount"] == len(expected)


async def test_excel_input_csv_falls_back_to_cp1252(
    call_node: CallNode, res: Resources, uploads: Path
) -> None:
    (uploads / "latin.csv").write_bytes("city,temp\nMálaga,21\n".encode("cp1252"))
    result = await call_node("excelInput", {"filePath": "latin.csv"}, resources=res)
    assert result["outputData"] == [{"city": "Málaga", "temp": 21}]


@pytest.mark.parametrize("kind", ["xlsx", "csv"])
@pytest.mark.parametrize("data_url", [False, True])
async def test_excel_input_reads_base64_content(
    call_node: CallNode, res: Resources, tmp_path: Path, kind: str, data_url: bool
) -> None:
    if kind == "xlsx":
        raw = write_xlsx(tmp_path / "x.xlsx", {"Data": XLSX_ROWS}).read_bytes()
        expected = XLSX_RECORDS
    else:
        raw, expected = CSV_TEXT.encode(), CSV_TYPED
    content = f"data:application/octet-stream;base64,{b64(raw)}" if data_url else b64(raw)
    # No fileType and no file name: the type is recognised from the bytes.
    result = await call_node("excelInput", {"fileContent": content}, resources=res)
    assert result["outputData"] == expected
    assert (result["source"], result["fileName"]) == ("base64", None)


async def test_excel_input_file_wins_over_inline_preview(
    call_node: CallNode, res: Resources, uploads: Path
) -> None:
    (uploads / "full.csv").write_text("n\n1\n2\n3\n")
    config = {"fileName": "full.csv", "parsedData": [{"n": "1"}], "filePath": "full.csv"}
    result = await call_node("excelInput", config, resources=res)
    assert result["outputData"] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_excel_input_absolute_path_inside_upload_dir(
    call_node: CallNode, res: Resources, uploads: Path
) -> None:
    (uploads / "sub").mkdir()
    (uploads / "sub" / "d.csv").write_text("x\n1\n")
    result = await call_node(
        "excelInput", {"filePath": str(uploads / "sub" / "d.csv")}, resources=res
    )
    assert result["outputData"] == [{"x": 1}]
    assert result["fileName"] == "d.csv"


async def test_excel_input_parses_100000_rows(
    call_node: CallNode, res: Resources, uploads: Path
) -> None:
    with (uploads / "big.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "sensor", "value", "note"])
        writer.writerows([i, f"s{i % 7}", i / 4, "" if i % 2 else "even"] for i in range(100_000))
    result = await call_node("excelInput", {"filePath": "big.csv"}, resources=res)
    rows = result["outputData"]
    assert result["rowCount"] == len(rows) == 100_000
    assert rows[0] == {"id": 0, "sensor": "s0", "value": 0, "note": "even"}  # "0.0" → 0
    assert type(rows[0]["value"]) is int
    assert rows[-1] == {"id": 99_999, "sensor": "s4", "value": 24999.75, "note": ""}


@pytest.mark.parametrize(
    ("setup", "config", "field"),
    [
        (None, {"filePath": "../outside.csv"}, "filePath"),
        (None, {"filePath": "/etc/passwd"}, "filePath"),
        ("symlink", {"filePath": "link.csv"}, "filePath"),
        (None, {"filePath": "missing.csv"}, "filePath"),
        (None, {"filePath": "bad\x00name.csv"}, "filePath"),
        (None, {"fileContent": "not base64!"}, "fileContent"),
        (None, {"fileContent": "===="}, "fileContent"),
        ("csv", {"filePath": "ok.csv", "fileType": "ods"}, "fileType"),
        ("csv", {"filePath": "ok.csv", "fileType": "xls"}, "fileType"),
        ("csv", {"filePath": "ok.csv", "fileType": "xlsx"}, "filePath"),  # not a zip
        ("csv", {"filePath": "ok.csv", "delimiter": ";;"}, "delimiter"),
        ("csv", {"filePath": "ok.csv", "encoding": "no-such-codec"}, "encoding"),
        ("xlsx", {"filePath": "ok.xlsx", "sheetName": "Nope"}, "sheetName"),
        (None, {"gcsPath": "bucket/file.json", "useGCS": True}, "gcsPath"),
    ],
)
async def test_excel_input_bad_config_names_the_field(
    call_node: CallNode,
    res: Resources,
    uploads: Path,
    tmp_path: Path,
    setup: str | None,
    config: dict[str, Any],
    field: str,
) -> None:
    (tmp_path / "outside.csv").write_text("secret\n1\n")
    if setup == "symlink":
        (uploads / "link.csv").symlink_to(tmp_path / "outside.csv")
    elif setup == "csv":
        (uploads / "ok.csv").write_text("a\n1\n")
    elif setup == "xlsx":
        write_xlsx(uploads / "ok.xlsx", {"Only": [["a"], [1]]})
    with pytest.raises(NodeConfigError) as info:
        await call_node("excelInput", config, resources=res)
    assert field in str(info.value)
    assert str(tmp_path) not in str(info.value).replace(str(uploads), "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42),
        ("-7", -7),
        ("0", 0),
        ("3.25", 3.25),
        (" 5 ", 5),
        ("007", "007"),
        ("2.0", 2),
        ("1e3", "1e3"),
        ("1,5", "1,5"),
        ("+1", "+1"),
        (".5", ".5"),
        ("", ""),
        ("123456789012345", 123456789012345),
        ("1234567890123456", "1234567890123456"),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
    ],
)
def test_csv_value_types_plain_numbers_only(text: str, expected: Any) -> None:
    assert csv_value(text) == expected
    assert type(csv_value(text)) is type(expected)


def test_rows_to_records_streams_from_a_generator() -> None:
    def rows() -> Any:
        yield ["a", "b"]
        for i in range(3):
            yield [str(i), ""]

    headers, records = rows_to_records(rows(), csv_value)
    assert headers == ["a", "b"]
    assert records == [{"a": 0, "b": ""}, {"a": 1, "b": ""}, {"a": 2, "b": ""}]


def make_pdf(pages: list[str], info: dict[str, str] | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text line per page, optional /Info dictionary."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
            f"<< /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info_ref = ""
    if info:
        objects.append(
            ("<< " + " ".join(f"/{k} ({v})" for k, v in info.items()) + " >>").encode("latin-1")
        )
        info_ref = f" /Info {len(objects)} 0 R"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info_ref} >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


PDF = make_pdf(
    ["Invoice 2024-001 (draft)", "Total due: 1,250.00 EUR"],
    {"Title": "Quarterly report", "Author": "Ana Ruiz", "CreationDate": "D:20240115103000Z"},
)


@pytest.mark.parametrize(
    ("config_for", "source", "file_name"),
    [
        (lambda p: {"filePath": "docs/invoice.pdf"}, "file", "invoice.pdf"),
        (lambda p: {"filePath": str(p)}, "file", "invoice.pdf"),
        (lambda p: {"fileContent": b64(PDF), "fileName": "upload.pdf"}, "base64", "upload.pdf"),
        (lambda p: {"fileContent": b64(PDF)}, "base64", None),
        (
            lambda p: {"filePath": "docs/invoice.pdf", "pdfText": "stale inline text"},
            "file",
            "invoice.pdf",
        ),
    ],
)
async def test_pdf_input_reads_a_real_pdf(
    call_node: CallNode,
    res: Resources,
    uploads: Path,
    config_for: Any,
    source: str,
    file_name: str | None,
) -> None:
    (uploads / "docs").mkdir()
    path = uploads / "docs" / "invoice.pdf"
    path.write_bytes(PDF)
    result = await call_node("pdfInput", config_for(path), resources=res)
    assert set(result["outputData"]) == {"text", "fileName", "pages"}
    assert "Invoice 2024-001 (draft)" in result["outputData"]["text"]
    assert "Total due: 1,250.00 EUR" in result["outputData"]["text"]
    assert (result["outputData"]["pages"], result["outputData"]["fileName"]) == (2, file_name)
    assert result["source"] == source
    meta = result["metadata"]
    assert (meta["title"], meta["author"]) == ("Quarterly report", "Ana Ruiz")
    assert dt.datetime.fromisoformat(meta["creationDate"]) == dt.datetime(
        2024, 1, 15, 10, 30, tzinfo=dt.UTC
    )


@pytest.mark.parametrize(
    ("config", "output", "extras"),
    [
        (
            {"pdfText": "Hello", "fileName": "a.pdf", "pages": 3},
            {"text": "Hello", "fileName": "a.pdf", "pages": 3},
            {},
        ),
        ({"parsedText": "Legacy key"}, {"text": "Legacy key", "fileName": None, "pages": None}, {}),
        (
            {"pdfText": "", "parsedText": "fallback"},
            {"text": "fallback", "fileName": None, "pages": None},
            {},
        ),
        (
            {"pdfText": "x", "metadata": {"Title": "T"}, "info": {"a": 1}},
            {"text": "x", "fileName": None, "pages": None},
            {"metadata": {"Title": "T"}},
        ),
    ],
)
async def test_pdf_input_inline_text(
    call_node: CallNode, config: dict[str, Any], output: dict[str, Any], extras: dict[str, Any]
) -> None:
    result = await call_node("pdfInput", config)
    assert result["outputData"] == output
    assert result["source"] == "inline"
    for key, value in extras.items():
        assert result[key] == value


@pytest.mark.parametrize("config", [{}, {"pdfText": ""}, {"fileName": "a.pdf", "pages": 2}])
async def test_pdf_input_without_data_fails(call_node: CallNode, config: dict[str, Any]) -> None:
    with pytest.raises(NodeConfigError) as info:
        await call_node("pdfInput", config)
    assert str(info.value) == "No PDF data configured. Please upload a PDF file."


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"filePath": "../x.pdf"}, "filePath"),
        ({"filePath": "nope.pdf"}, "filePath"),
        ({"filePath": "fake.pdf"}, "filePath"),
        ({"fileContent": b64(b"%PDF-1.4 truncated garbage")}, "fileContent"),
        ({"fileContent": "%%%"}, "fileContent"),
        ({"gcsPath": "b/doc.json", "useGCS": True, "pdfTextPreview": "..."}, "gcsPath"),
    ],
)
async def test_pdf_input_bad_config_names_the_field(
    call_node: CallNode,
    res: Resources,
    uploads: Path,
    tmp_path: Path,
    config: dict[str, Any],
    field: str,
) -> None:
    (tmp_path / "x.pdf").write_bytes(PDF)
    (uploads / "fake.pdf").write_text("just text")
    with pytest.raises(NodeConfigError) as info:
        await call_node("pdfInput", config, resources=res)
    assert field in str(info.value)
