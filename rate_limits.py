"""Rate limits (issue 11) on the `limits` library's moving windows: submits per API key or per
organization (RATE_LIMITS), and outbound calls per node type (NODE_RATE_LIMITS).

The windows live in Redis when REDIS_URL is set, so every API replica and every worker process
shares them; otherwise in this process's memory (each process then has its own windows). While
Redis cannot be answered, each process counts in its own memory windows (logged once a minute):
limits then hold per process instead of not at all; a call that finds Redis unanswering waits
REDIS_TIMEOUT_S at most, and the calls of the next REDIS_RETRY_S go straight to memory.
"""

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

logger = logging.getLogger(__name__)

NAMESPACE = "wos"
REDIS_TIMEOUT_S = 1.0
"""Connect and read timeout of the limits' Redis: past it the call counts as unanswered."""
REDIS_RETRY_S = 5.0
"""After Redis failed a call, how long the process counts in memory before trying it again."""
UNREACHABLE_LOG_S = 60.0
MAX_SLEEP_S = 1.0
"""A waiting node looks again at least this often (another worker's slot may free earlier)."""


class RateLimitSettingError(ValueError):
    """A rate limit setting that cannot be parsed (the message says which and why)."""


def parse_limits(text: str | None, setting: str = "RATE_LIMITS") -> list[RateLimitItem]:
    """`100/second;5000/hour` (also `,` or `|` between limits) as limit items; empty: none."""
    if not text or not text.strip():
        return []
    try:
        return list(parse_many(text.strip()))
    except ValueError:
        raise RateLimitSettingError(
            f"{setting}: cannot read {text.strip()[:100]!r}; write limits like "
            "'100/second;5000/hour' (<count>/<second|minute|hour|day>, several separated by ';')"
        ) from None


def parse_node_limits(text: str | None) -> dict[str, list[RateLimitItem]]:
    """`llm=60/minute;sendSMS=10/second` (several limits of one type: `llm=60/minute,1000/day`)
    as node type -> limit items."""
    found: dict[str, list[RateLimitItem]] = {}
    for entry in (text or "").split(";"):
        if not entry.strip():
            continue
        node_type, eq, limits = entry.partition("=")
        if not eq or not node_type.strip():
            raise RateLimitSettingError(
                f"NODE_RATE_LIMITS: {entry.strip()[:100]!r} is not <nodeType>=<limit>, e.g. "
                "'llm=60/minute;sendSMS=10/second'"
            )
        found[node_type.strip()] = parse_limits(limits, "NODE_RATE_LIMITS")
    return found


def open_storage(redis_url: str | None) -> Storage:
    """Redis (redis-py's asyncio client) at `redis_url`, else this process's memory. Its
    errors (Redis unreachable, slower than REDIS_TIMEOUT_S, …) come as
    `limits.errors.StorageError`."""
    if not redis_url:
        return MemoryStorage()
    scheme, sep, rest = redis_url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise RateLimitSettingError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
    storage = storage_from_string(
        f"async+{scheme}://{rest}",
        implementation="redispy",
        wrap_exceptions=True,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
    )
    if not isinstance(storage, Storage):  # the async+ schemes give the asyncio storages
        raise RateLimitSettingError(f"REDIS_URL: no asyncio storage for {scheme}://")
    return storage


@dataclass(frozen=True, slots=True)
class Verdict:
    """A submit's answer: allowed, or how many whole seconds until it would be."""

    allowed: bool
    retry_after_s: int = 0


class Windows:
    """Moving windows of some limits over one storage, and this process's memory windows for
    while that storage cannot be answered."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(storage)
        self.fallback = MovingWindowRateLimiter(MemoryStorage())
        self._logged_at = -UNREACHABLE_LOG_S
        self._down_until = 0.0

    async def take(self, limits: Iterable[RateLimitItem], *key: str) -> float:
        """Take one slot of every limit for `key`; 0 when taken, else the seconds until the
        fullest window frees one (then nothing is taken)."""
        items = list(limits)
        if time.monotonic() < self._down_until:
            return await self._take(self.fallback, items, key)
        try:
            return await self._take(self.limiter, items, key)
        except StorageError as exc:
            now = time.monotonic()
            self._down_until = now + REDIS_RETRY_S
            if now - self._logged_at >= UNREACHABLE_LOG_S:
                self._logged_at = now
                logger.error(
                    "rate limit store unreachable (%r); counting in this process's memory",
                    exc.storage_error,
                )
            return await self._take(self.fallback, items, key)

    @staticmethod
    async def _take(
        limiter: MovingWindowRateLimiter, items: list[RateLimitItem], key: tuple[str, ...]
    ) -> float:
        waits = []
        for item in items:
            if not await limiter.test(item, NAMESPACE, *key):
                stats = await limiter.get_window_stats(item, NAMESPACE, *key)
                waits.append(max(0.0, stats.reset_time - time.time()))
        if waits:
            return max(waits)
        for item in items:
            if not await limiter.hit(item, NAMESPACE, *key):  # another process was first
                stats = await limiter.get_window_stats(item, NAMESPACE, *key)
                return max(0.001, stats.reset_time - time.time())
        return 0.0


class SubmitLimits(Windows):
    """RATE_LIMITS on submits: per API key when API_KEYS is set, else per organization (the
    body's organizationId; none is one group)."""

    def __init__(self, limits: list[RateLimitItem], storage: Storage) -> None:
        super().__init__(storage)
        self.limits = limits

    async def check(self, *, key_id: str | None, organization: str | None) -> Verdict:
        if not self.limits:
            return Verdict(True)
        who = ("key", key_id) if key_id is not None else ("org", organization or "")
        wait = await self.take(self.limits, "submit", *who)
        return Verdict(wait == 0, math.ceil(wait) if wait else 0)


class NodeLimits(Windows):
    """NODE_RATE_LIMITS: a node of a limited type waits for its slot before it runs."""

    def __init__(self, limits: dict[str, list[RateLimitItem]], storage: Storage) -> None:
        super().__init__(storage)
        self.limits = limits

    async def wait(self, node_type: str) -> None:
        """Return once the node may call out; cancellable at any point (the caller bounds the
        wait with the node's timeout)."""
        limits = self.limits.get(node_type)
        if not limits:
            return
        while wait := await self.take(limits, "node", node_type):
            await asyncio.sleep(min(max(wait, 0.005), MAX_SLEEP_S))
