"""Structural node types: trigger, manualInput, output, webhook, comment."""

from typing import Any

from pydantic import AliasChoices, Field

from jsonutil import now_iso
from tasks.context import RunContext
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import parse_number_string


class EmptyConfig(NodeConfig):
    pass


@node("trigger", config=EmptyConfig)
async def trigger(config: EmptyConfig, data: Any, ctx: RunContext) -> Envelope:
    return envelope("Workflow triggered", {})


class ManualInputConfig(NodeConfig):
    name: str = Field(
        default="input",
        validation_alias=AliasChoices("manualInputVarName", "inputVarName", "variableName"),
    )
    value: Any = Field(
        default="",
        validation_alias=AliasChoices("manualInputVarValue", "inputVarValue", "variableValue"),
    )


@node("manualInput", config=ManualInputConfig)
async def manual_input(config: ManualInputConfig, data: Any, ctx: RunContext) -> Envelope:
    """Run-time `inputs[<node id>]` wins over the configured value; numeric strings → numbers."""
    value = ctx.inputs.get(ctx.node_id)
    if value is None:
        value = config.value
    if isinstance(value, str):
        value = parse_number_string(value)
    return envelope(f"Manual input {config.name} set", {config.name: value})


@node("output", config=EmptyConfig)
async def output(config: EmptyConfig, data: Any, ctx: RunContext) -> Envelope:
    return envelope("Workflow output", data, isFinal=True)


class WebhookConfig(NodeConfig):
    webhookId: str | None = None


def webhook_input(config: dict[str, Any] | None, inputs: dict[str, Any]) -> Any:
    """A webhook root gets `inputs._webhookData` ?? `config.webhookData` ?? `{}`."""
    data = inputs.get("_webhookData")
    if data is None:
        data = (config or {}).get("webhookData")
    return {} if data is None else data


@node("webhook", config=WebhookConfig, root_input=webhook_input)
async def webhook(config: WebhookConfig, data: Any, ctx: RunContext) -> Envelope:
    payload = {} if data is None else data
    return envelope(
        "Webhook data received",
        payload,
        data=payload,
        webhookId=config.webhookId or ctx.node_id,
        receivedAt=now_iso(),
    )


@node("comment", config=EmptyConfig, runs_unconnected=False)
async def comment(config: EmptyConfig, data: Any, ctx: RunContext) -> Envelope:
    return envelope("Comment (passthrough)", data)
