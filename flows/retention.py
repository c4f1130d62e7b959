"""The retention task of the worker processes: every RETENTION_INTERVAL_SECONDS (at most a minute)
the process holding the `retention` lease deletes the finished executions outside
EXECUTION_RETENTION_DAYS / EXECUTION_RETENTION_MAX (`database.retention`) with their logs, events,
callback deliveries, idempotency keys and IMAGE_DIR charts.

Deletes run in short write transactions: the row budget of the next one adapts to how long the
last one held the write lock (`TARGET_HOLD_S`), so SQLite's single writer is never held for more
than a few tens of ms and the workers' checkpoints interleave with the pruning.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import Settings
from database import retention
from database.retention import RetentionPolicy

logger = logging.getLogger(__name__)

LEASE_NAME = "retention"
EXECUTIONS_PER_BATCH = 50
"""Executions one pass selects and deletes together."""
MAX_BATCHES_PER_PASS = 200
"""At most this many batches (10,000 executions) per pass; the rest waits for the next one."""
BATCHES_PER_READ = 20
"""One candidates query serves this many batches (it ranks every finished execution per
organization, so it is read once per 1,000 executions rather than per batch)."""
TARGET_HOLD_S = 0.02
"""A delete transaction aims at holding the write lock at most this long."""
MIN_ROWS, START_ROWS, MAX_ROWS = 50, 500, 20_000
PAUSE_S = 0.005
"""Between two delete transactions, so other writers get the lock."""


@dataclass(slots=True)
class PassReport:
    """What one pass did, for its log line and the tests."""

    executions: int = 0
    rows: int = 0
    transactions: int = 0
    longest_hold_s: float = 0.0
    images: int = 0
    holds: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Budget:
    """The row budget of the next delete transaction: halved after one that held the lock longer
    than `TARGET_HOLD_S`, doubled after one well under it."""

    rows: int = START_ROWS

    def after(self, seconds: float) -> None:
        if seconds > TARGET_HOLD_S:
            self.rows = max(MIN_ROWS, self.rows // 2)
        elif seconds < TARGET_HOLD_S / 4:
            self.rows = min(MAX_ROWS, self.rows * 2)


def policy_of(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(settings.EXECUTION_RETENTION_DAYS, settings.EXECUTION_RETENTION_MAX)


def remove_images(image_dir: Path, execution_ids: list[str]) -> int:
    """Delete the charts `<execution id>_<node id>.png` of these executions; how many."""
    removed = 0
    for eid in execution_ids:
        for path in image_dir.glob(f"{eid}_*.png"):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


async def prune_pass(
    store: Any,
    policy: RetentionPolicy,
    image_dir: Path,
    *,
    budget: Budget | None = None,
    executions_per_batch: int = EXECUTIONS_PER_BATCH,
    max_batches: int = MAX_BATCHES_PER_PASS,
    now: float | None = None,
    still_mine: Callable[[], Awaitable[bool]] | None = None,
) -> PassReport:
    """Delete what `policy` does not keep, batch by batch (bounded by `max_batches`); before
    each batch after the first, `still_mine` renews the lease (False: another process took it
    over, the pass ends)."""
    report, budget = PassReport(), budget or Budget()
    found: list[str] = []
    for batch in range(max_batches):
        if batch and still_mine is not None and not await still_mine():
            break
        if not found:
            limit = executions_per_batch * BATCHES_PER_READ
            found = await retention.candidates(store, policy, limit, now or time.time())
            if not found:
                break
        left = set(found[:executions_per_batch])
        del found[:executions_per_batch]
        while left:
            pruned = await retention.prune(store, sorted(left), budget.rows)
            budget.after(pruned.seconds)
            report.transactions += 1
            report.rows += pruned.rows
            report.holds.append(pruned.seconds)
            report.longest_hold_s = max(report.longest_hold_s, pruned.seconds)
            if pruned.executions:
                left.difference_update(pruned.executions)
                report.executions += len(pruned.executions)
                report.images += await asyncio.to_thread(
                    remove_images, image_dir, pruned.executions
                )
            elif not pruned.rows:
                break  # nothing deleted: no longer prunable (never expected); next pass
            await asyncio.sleep(PAUSE_S)
    return report


class RetentionService:
    """One per worker process; only the lease holder prunes."""

    def __init__(self, settings: Settings, store: Any, owner: str) -> None:
        self.settings, self.store, self.owner = settings, store, owner
        self.policy = policy_of(settings)
        self.budget = Budget()

    async def run(self, stop: asyncio.Event) -> None:
        if not self.policy.enabled:
            return
        interval = self.settings.RETENTION_INTERVAL_SECONDS
        image_dir = Path(self.settings.IMAGE_DIR).expanduser().resolve()
        try:
            while not stop.is_set():
                try:
                    await self.tick(image_dir, lease_s=interval * 3)
                except Exception:  # noqa: BLE001 - a store hiccup must not end retention
                    logger.exception("retention pass failed; retrying")
                try:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                except TimeoutError:
                    pass
        finally:
            try:
                await retention.drop_lease(self.store, LEASE_NAME, self.owner)
            except Exception:  # noqa: BLE001 - the lease expires on its own
                logger.warning("retention lease not given back", exc_info=True)

    async def tick(self, image_dir: Path, lease_s: float) -> PassReport | None:
        """One pass if this process holds the lease (None: another one does)."""
        if not await retention.take_lease(self.store, LEASE_NAME, self.owner, lease_s):
            return None

        async def still_mine() -> bool:
            return await retention.take_lease(self.store, LEASE_NAME, self.owner, lease_s)

        report = await prune_pass(
            self.store, self.policy, image_dir, budget=self.budget, still_mine=still_mine
        )
        if report.executions:
            logger.info(
                "retention: deleted %d execution(s), %d row(s), %d image(s) in %d transaction(s)"
                " (longest write %.1f ms)",
                report.executions,
                report.rows,
                report.images,
                report.transactions,
                report.longest_hold_s * 1000,
                extra={"action": "retention"},
            )
        return report
