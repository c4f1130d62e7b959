"""Data-shaping node types: addField."""

from typing import Any

from pydantic import AliasChoices, Field

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
    the record it is added to."""

    def value_for(record: Any) -> Any:
        if isinstance(config.value, str):
            return render_template(config.value, record)
        return config.value

    def add_to(rows: list[Any]) -> list[Any]:
        return [{**r, config.name: value_for(r)} if isinstance(r, dict) else r for r in rows]

    if isinstance(data, list):
        rows = await run_cpu(add_to, data, size=len(data))
        return envelope(f"Added field {config.name} to {len(rows)} records", rows)
    record = data if isinstance(data, dict) else {}
    return envelope(f"Added field {config.name}", {**record, config.name: value_for(record)})
