"""NODE_RATE_LIMITS for the node runs of a process: the types it names must be node types
(checked when the process opens its resources, i.e. at start-up), and a limited node waits for
its slot (`rate_limits.NodeLimits.wait`) inside its timeout, before it calls out."""

from config import Settings
from rate_limits import NodeLimits, RateLimitSettingError, open_storage, parse_node_limits
from tasks.registry import node_types


def node_limits_of(settings: Settings) -> NodeLimits:
    """The process's node limits (Redis when REDIS_URL is set, else this process's memory).
    Raises RateLimitSettingError naming the unknown node types."""
    limits = parse_node_limits(settings.NODE_RATE_LIMITS)
    unknown = sorted(set(limits) - set(node_types()))
    if unknown:
        raise RateLimitSettingError(
            f"NODE_RATE_LIMITS names unknown node types: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(node_types()))})"
        )
    return NodeLimits(limits, open_storage(settings.REDIS_URL))
