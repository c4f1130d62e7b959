"""Data-shaping node types: addField."""

from typing import Any

from pydantic import AliasChoices, Field

from errors import NodeExecutionError
from tasks.context import RunContext
from tasks.cpu import run_cpu
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import render_template


class AddFieldConfig(NodeConfig):
    name: str = Field(
        default="newField", validation_alias=AliasChoices("addFieldName", "fieldName")
    )
    value: Any = Field(default="", validation_alias=AliasChoices("addFieldValue", "fieldValue"))


@node("addField", config=AddFieldConfig)
async def add_field(config: AddFieldConfig, data: Any, ctx: RunContext) -> Envelope:
    """Adds `name: value` to each record (a list) or to the object; `{{field}}` is filled from
    the record it is added to. The values it renders count toward MAX_NODE_OUTPUT_BYTES as they
    are made, so a big template over many records stops at the limit, not out of memory."""
    limit = ctx.settings.MAX_NODE_OUTPUT_BYTES

    def value_for(record: Any) -> Any:
        if isinstance(config.value, str):
            return render_template(config.value, record, limit)
        return config.value

    def add_to(rows: list[Any]) -> list[Any]:
        out, rendered = [], 0
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                out.append(row)
                continue
            value = value_for(row)
            if value is not config.value and isinstance(value, str):  # a new string
                rendered += len(value)
                if rendered > limit:
                    raise NodeExecutionError(
                        f"Node output is over {limit:,} bytes, the limit "
                        f"(MAX_NODE_OUTPUT_BYTES): the values of records 0 to {index:,} "
                        "already are"
                    )
            out.append({**row, config.name: value})
        return out

    if isinstance(data, list):
        rows = await run_cpu(add_to, data, size=len(data))
        return envelope(f"Added field {config.name} to {len(rows)} records", rows)
    record = data if isinstance(data, dict) else {}
    return envelope(f"Added field {config.name}", {**record, config.name: value_for(record)})
