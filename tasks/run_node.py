"""The one failure boundary around a handler: config validation, timeout, wrapping, retries."""

import asyncio
import logging
import random
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from errors import NodeConfigError, NodeError, NodeExecutionError, NodeTimeout
from models import NodeDef
from tasks.context import RunContext
from tasks.registry import Envelope, NodeSpec, get_spec

logger = logging.getLogger(__name__)

MAX_RETRIES = 2  # contract Decision 12: at most 3 requests per node run


@dataclass(frozen=True)
class RetryPolicy:
    """Retries, base backoff delay and per-attempt timeout of one node (type default + config)."""

    retries: int
    delay_s: float
    timeout_s: float | None

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter before retry number `attempt` (1-based)."""
        return float(self.delay_s * (2 ** (attempt - 1)) * (0.5 + random.random()))


def retry_policy(spec: NodeSpec, node: NodeDef) -> RetryPolicy:
    """The node type's defaults, overridden by the node's `retries`/`retryDelayMs`/`timeoutMs`."""
    cfg = node.config or {}
    retries = spec.retries if spec.network else 0
    delay_s, timeout_s = 0.5, spec.timeout_s
    try:
        if cfg.get("retries") not in (None, ""):
            retries = max(0, min(MAX_RETRIES, int(cfg["retries"])))
        if cfg.get("retryDelayMs") not in (None, ""):
            delay_s = max(0.0, float(cfg["retryDelayMs"]) / 1000)
        if cfg.get("timeoutMs") not in (None, ""):
            timeout_s = max(0.001, float(cfg["timeoutMs"]) / 1000)
    except (TypeError, ValueError):
        raise NodeConfigError("retries, retryDelayMs and timeoutMs must be numbers") from None
    return RetryPolicy(retries, delay_s, timeout_s)


def validate_config(spec: NodeSpec, node: NodeDef) -> Any:
    try:
        return spec.config.model_validate(node.config or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "config"
        raise NodeConfigError(f"Invalid config field '{field}': {err['msg']}") from None


async def run_attempt(node: NodeDef, data: Any, ctx: RunContext) -> Envelope:
    """Run the handler once. Every failure leaves as a NodeError; cancellation passes through."""
    spec = get_spec(node.type)
    policy = retry_policy(spec, node)
    config = validate_config(spec, node)
    try:
        async with asyncio.timeout(policy.timeout_s):
            result = await spec.handler(config, data, ctx)
        if isinstance(result, dict) and result.get("success") is False:
            raise NodeExecutionError(
                str(result.get("error") or result.get("message") or "Node failed")
            )
    except NodeError as exc:
        exc.attempts = ctx.attempt
        raise
    except TimeoutError:
        timeout = NodeTimeout(f"Node timed out after {policy.timeout_s:g} s")
        timeout.attempts = ctx.attempt
        raise timeout from None
    except Exception as exc:  # noqa: BLE001 - the one place handler errors are wrapped
        error = NodeExecutionError(f"{type(exc).__name__}: {exc}")
        error.attempts = ctx.attempt
        raise error from exc
    return {**result, "attempts": ctx.attempt}


async def run_with_retries(node: NodeDef, data: Any, ctx: RunContext) -> Envelope:
    """Inline execution: `run_attempt` under the node's retry policy."""
    policy = retry_policy(get_spec(node.type), node)
    attempt = 1
    while True:
        try:
            return await run_attempt(node, data, replace(ctx, attempt=attempt))
        except NodeError as exc:
            if not exc.retryable or attempt > policy.retries:
                raise
            delay = policy.delay(attempt)
            logger.warning(
                "node %s attempt %d failed (%s); retrying in %.2f s",
                node.id,
                attempt,
                exc,
                delay,
                extra={"execution_id": ctx.execution_id, "node_id": node.id, "action": "retry"},
            )
            attempt += 1
            await asyncio.sleep(delay)
