"""The llm node: one chat completion through the official openai SDK (service-side retries)."""

import json
import logging
import re
from typing import Any, Literal

from pydantic import AliasChoices, Field

from errors import NodeConfigError, NodeExecutionError
from tasks.context import RunContext
from tasks.redaction import redact
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import js_str, parse_number_string

logger = logging.getLogger(__name__)


class LlmConfig(NodeConfig):
    prompt: str | None = Field(default=None, validation_alias=AliasChoices("llmPrompt", "prompt"))
    llmIncludeInput: bool = True
    outputType: Literal["text", "number", "date", "enum"] = "text"
    enumOptions: list[str] = Field(default_factory=list)


def build_message(config: LlmConfig, data: Any) -> str:
    message = config.prompt or ""
    if data and config.llmIncludeInput:
        message += "\n\nContext data:\n" + json.dumps(data, indent=2, ensure_ascii=False)
    if config.outputType == "number":
        message += "\n\nIMPORTANT: Respond with only a number, with no units, words or explanation."
    elif config.outputType == "date":
        message += (
            "\n\nIMPORTANT: Respond with only a date in the format YYYY-MM-DD, with no other text."
        )
    elif config.outputType == "enum":
        options = ", ".join(f'"{o}"' for o in config.enumOptions)
        message += (
            f"\n\nIMPORTANT: Respond with exactly one of these options: {options}. "
            "Respond with the option only."
        )
    return message


def post_process(config: LlmConfig, raw: str) -> str:
    if config.outputType == "number":
        cleaned = re.sub(r"[^\d.\-]", "", raw)
        number = parse_number_string(cleaned)
        return js_str(number) if not isinstance(number, str) else raw
    if config.outputType == "date":
        match = re.search(r"\d{4}-\d{2}-\d{2}", raw)
        return match.group(0) if match else raw
    if config.outputType == "enum":
        text = raw.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
        return next((o for o in config.enumOptions if o.lower() == text.lower()), text)
    return raw


@node("llm", config=LlmConfig, retries=2, timeout_s=120, network=True)
async def llm(config: LlmConfig, data: Any, ctx: RunContext) -> Envelope:
    if not config.prompt:
        raise NodeConfigError("No prompt configured for LLM node")
    secret = ctx.settings.OPENAI_API_KEY
    key = secret.get_secret_value() if secret else ""
    if not key:
        raise NodeConfigError("OpenAI API key not configured")
    import openai  # deferred: the SDK takes ~0.4 s to import and most workflows never use it

    try:
        completion = await ctx.resources.openai().chat.completions.create(
            model=ctx.settings.OPENAI_MODEL,
            messages=[{"role": "user", "content": build_message(config, data)}],
        )
    except (openai.APIConnectionError, openai.RateLimitError) as exc:
        text = redact(f"LLM request failed: {exc}", key)
        raise NodeExecutionError(text, retryable=True) from exc
    except openai.APIStatusError as exc:
        raise NodeExecutionError(
            redact(f"LLM request failed with status {exc.status_code}: {exc.message}", key),
            retryable=exc.status_code >= 500,
        ) from exc
    raw = (completion.choices[0].message.content or "") if completion.choices else ""
    answer = post_process(config, raw)
    output = {"response": answer, "outputType": config.outputType, "inputData": data}
    return envelope("LLM response generated", output, llmResponse=answer)
