"""The pdfInput node type: inline text, or the text of a PDF file (pypdf, in a worker thread)."""

from typing import Any

from pydantic import AliasChoices, ConfigDict, Field

from errors import NodeConfigError
from tasks.context import RunContext
from tasks.cpu import run_cpu
from tasks.inputs import GCS_UNSUPPORTED, FileSource, file_source
from tasks.registry import Envelope, NodeConfig, envelope, node


class PdfInputConfig(NodeConfig):
    """Open model: the editor stores more keys (info, useGCS, pdfTextPreview)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    pdfText: str | None = Field(
        default=None, validation_alias=AliasChoices("pdfText", "parsedText")
    )
    fileName: str | None = None
    pages: Any = None
    metadata: Any = None
    filePath: str | None = None
    fileContent: str | None = None
    gcsPath: str | None = None


def _metadata_key(key: str) -> str:
    name = key.lstrip("/")
    return name[:1].lower() + name[1:]


def _pdf_metadata(reader: Any) -> dict[str, str]:
    """The document information dictionary as JSON-safe strings (`/CreationDate` → ISO)."""
    info = reader.metadata
    if not info:
        return {}
    out: dict[str, str] = {}
    for key in list(info):
        value = info[key]
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        out[_metadata_key(str(key))] = text.replace("\x00", "")
    for key, moment in (("creationDate", "creation_date"), ("modDate", "modification_date")):
        try:
            parsed = getattr(info, moment)
        except ValueError:
            continue
        if parsed is not None:
            out[key] = parsed.isoformat()
    return out


def read_pdf(source: FileSource, max_pages: int) -> tuple[str, int, dict[str, str]]:
    """(text of all pages joined by blank lines, page count, metadata); blocking. More than
    `max_pages` pages is a NodeConfigError naming MAX_PDF_PAGES."""
    from pypdf import PdfReader

    with source.open() as handle:
        try:
            reader = PdfReader(handle)
            if reader.is_encrypted and not reader.decrypt(""):
                raise NodeConfigError(f"{source.field}: the PDF is password-protected")
            if len(reader.pages) > max_pages:
                raise NodeConfigError(
                    f"{source.field}: the PDF has {len(reader.pages):,} pages, over the limit "
                    f"of {max_pages:,} (MAX_PDF_PAGES)"
                )
            texts = [page.extract_text() or "" for page in reader.pages]
            return "\n\n".join(texts).strip(), len(texts), _pdf_metadata(reader)
        except NodeConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - pypdf raises many types for broken files
            raise NodeConfigError(
                f"{source.field} is not a readable PDF file ({type(exc).__name__}: {exc})"
            ) from None


@node("pdfInput", config=PdfInputConfig)
async def pdf_input(config: PdfInputConfig, data: Any, ctx: RunContext) -> Envelope:
    """A file (`filePath`, else base64 `fileContent`) wins over the inline `pdfText`."""
    source = None
    if config.filePath or config.fileContent:  # decoding base64 is CPU work too
        args = (ctx, config.filePath, config.fileContent, config.fileName)
        source = await run_cpu(file_source, *args)
    if source is not None:
        max_pages = ctx.settings.MAX_PDF_PAGES
        text, pages, metadata = await run_cpu(read_pdf, source, max_pages)
        name = source.name if source.kind == "file" else config.fileName
        return envelope(
            f"Extracted {len(text)} characters from {pages} page(s) of {name or 'base64 content'}",
            {"text": text, "fileName": name, "pages": pages},
            source=source.kind,
            metadata=metadata,
        )
    if not config.pdfText:
        if config.gcsPath:
            raise NodeConfigError(GCS_UNSUPPORTED)
        raise NodeConfigError("No PDF data configured. Please upload a PDF file.")
    extras = {} if config.metadata is None else {"metadata": config.metadata}
    return envelope(
        f"Loaded {len(config.pdfText)} characters of PDF text",
        {"text": config.pdfText, "fileName": config.fileName, "pages": config.pages},
        source="inline",
        **extras,
    )
