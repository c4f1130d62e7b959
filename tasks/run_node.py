"""The one failure boundary around a handler: config validation, timeout, wrapping, retries."""

import asyncio
import logging
import math
import random
import re
from dataclasses import dataclass, replace
from typing import Any

from pydantic import SecretStr, ValidationError

from errors import (
    GraphValidationError,
    NodeConfigError,
    NodeError,
    NodeExecutionError,
    NodeTimeout,
)
from models import NodeDef
from tasks.context import RunContext
from tasks.limits import check_output
from tasks.redaction import SECRET_PARAMS, redact, redact_url
from tasks.registry import Envelope, NodeSpec, get_spec, secret_keys, secret_values

logger = logging.getLogger(__name__)

MAX_RETRIES = 2  # contract Decision 12 / §5.5: at most 3 requests per node run
MAX_RETRY_DELAY_MS = 60_000
MAX_TIMEOUT_MS = 3_600_000
_LIMITS: dict[str, int] = {
    "retries": MAX_RETRIES,
    "retryDelayMs": MAX_RETRY_DELAY_MS,
    "timeoutMs": MAX_TIMEOUT_MS,
}
"""The largest value of each per-node setting (the limit itself is accepted); checked at submit
(`check_node_limits`) and again when the node runs (`retry_policy`)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries, base backoff delay and per-attempt timeout of one node (type default + config)."""

    retries: int
    delay_s: float
    timeout_s: float | None

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter before retry number `attempt` (1-based)."""
        return float(self.delay_s * (2 ** (attempt - 1)) * (0.5 + random.random()))


def node_limits(config: dict[str, Any] | None) -> dict[str, float]:
    """The node's own `retries`, `retryDelayMs` and `timeoutMs` (only those it sets; retries
    as a whole number). Raises NodeConfigError when one is not a finite number or exceeds its
    limit (`_LIMITS`)."""
    values: dict[str, float] = {}
    for key, limit in _LIMITS.items():
        raw = (config or {}).get(key)
        if raw is None or raw == "":
            continue
        try:
            value = float(int(raw) if key == "retries" else float(raw))
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if math.isnan(value):
            raise NodeConfigError("retries, retryDelayMs and timeoutMs must be numbers")
        if value > limit:
            raise NodeConfigError(f"{key} must be at most {limit:,} (got {str(raw)[:30]})")
        values[key] = value
    return values


def check_node_limits(config: Any, where: str = "") -> None:
    """Submit-time `node_limits`: a violation is a GraphValidationError (422) naming the limit,
    prefixed by `where` (the node)."""
    try:
        node_limits(config if isinstance(config, dict) else None)
    except NodeConfigError as exc:
        raise GraphValidationError(f"{where}{exc}") from None


def retry_policy(spec: NodeSpec, node: NodeDef) -> RetryPolicy:
    """The node type's defaults, overridden by the node's `retries`/`retryDelayMs`/`timeoutMs`."""
    own = node_limits(node.config)
    retries = spec.retries if spec.network else 0
    delay_s, timeout_s = 0.5, spec.timeout_s
    if "retries" in own:
        retries = max(0, int(own["retries"]))
    if "retryDelayMs" in own:
        delay_s = max(0.0, own["retryDelayMs"] / 1000)
    if "timeoutMs" in own:
        timeout_s = max(0.001, own["timeoutMs"] / 1000)
    return RetryPolicy(retries, delay_s, timeout_s)


def validate_config(spec: NodeSpec, node: NodeDef) -> Any:
    try:
        return spec.config.model_validate(node.config or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "config"
        raise NodeConfigError(f"Invalid config field '{field}': {err['msg']}") from None


_URL_SECRET = re.compile(
    r"://([^\s/?#@\"'<>\\]+)@|[?&;](?:"
    + "|".join(map(re.escape, SECRET_PARAMS))
    + r")=([^&#;\s\"'<>\\]+)",
    re.IGNORECASE,
)


def node_secrets(spec: NodeSpec, node: NodeDef) -> list[str]:
    """The node's own secrets: its config's values of the fields its type declares `SecretStr`,
    and the user-info and secret query values of the URLs in its (top-level) config strings."""
    found = secret_values(spec.config, node.config)
    for value in (node.config or {}).values():
        if isinstance(value, str) and ("://" in value or "=" in value):
            for userinfo, param in (m.groups() for m in _URL_SECRET.finditer(value)):
                found += [userinfo, userinfo.partition(":")[2]] if userinfo else [param]
    return found


def scrub(text: str, spec: NodeSpec, node: NodeDef, ctx: RunContext) -> str:
    """`text` without URL secrets (`redact_url`), the node's own (`node_secrets`, wherever they
    appear, e.g. echoed by a server) or the service's (every `SecretStr` setting)."""
    settings = ctx.settings
    own = (getattr(settings, key, None) for key in secret_keys(type(settings)))
    service = [v.get_secret_value() for v in own if isinstance(v, SecretStr)]
    return redact(redact_url(text), *node_secrets(spec, node), *service)


async def run_attempt(node: NodeDef, data: Any, ctx: RunContext) -> Envelope:
    """Run the handler once. Every failure leaves as a NodeError; cancellation passes through."""
    spec = get_spec(node.type)
    policy = retry_policy(spec, node)
    config = validate_config(spec, node)
    try:
        async with asyncio.timeout(policy.timeout_s):
            await ctx.resources.node_limits.wait(node.type)  # NODE_RATE_LIMITS: its slot first
            result = await spec.handler(config, data, ctx)
        if isinstance(result, dict) and result.get("success") is False:
            raise NodeExecutionError(
                str(result.get("error") or result.get("message") or "Node failed")
            )
        check_output(result, ctx.settings)
    except NodeError as exc:
        exc.attempts = ctx.attempt
        exc.args = (scrub(str(exc), spec, node, ctx),)  # no secrets in stored errors or logs
        raise
    except TimeoutError:
        timeout = NodeTimeout(f"Node timed out after {policy.timeout_s:g} s")
        timeout.attempts = ctx.attempt
        raise timeout from None
    except Exception as exc:  # noqa: BLE001 - the one place handler errors are wrapped
        error = NodeExecutionError(scrub(f"{type(exc).__name__}: {exc}", spec, node, ctx))
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
