"""File-input node types: excelInput (inline rows as the editor stores them)."""

from typing import Any

from pydantic import ConfigDict

from errors import NodeConfigError
from tasks.context import RunContext
from tasks.registry import Envelope, NodeConfig, envelope, node


class ExcelInputConfig(NodeConfig):
    """Open model: keys for other sources (file path, base64) may be added later."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    fileName: str | None = None
    parsedData: list[Any] | None = None


@node("excelInput", config=ExcelInputConfig)
async def excel_input(config: ExcelInputConfig, data: Any, ctx: RunContext) -> Envelope:
    if config.parsedData is None:
        raise NodeConfigError("No data configured for Excel/CSV node. Please upload a file.")
    rows = config.parsedData
    name = config.fileName or "inline data"
    return envelope(f"Loaded {len(rows)} rows from {name}", rows, rowCount=len(rows),
                    source="inline")
