"""The in-memory `CallbackStore` of `database.memory.MemoryStore`, with the SQL outbox's rules:
one delivery per (event id, url), a cursor that never goes back, leases on claims."""

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

from database.interfaces import Delivery, DeliveryResult, NewDelivery, Row
from jsonutil import now_iso
from states import DeliveryStatus


class MemoryCallbackStore:
    """Deliveries in a dictionary; `runs` gives the store's service rows (their callbacks)."""

    def __init__(self, runs: Callable[[], dict[str, Row]]) -> None:
        self._runs = runs
        self.reset()

    def reset(self) -> None:
        self.deliveries: dict[str, Delivery] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self._keys: set[tuple[int, str]] = set()
        self._cursor = 0

    async def cursor(self) -> int:
        return self._cursor

    async def callbacks_of(self, execution_ids: Collection[str]) -> dict[str, str]:
        runs = self._runs()
        return {
            eid: runs[eid]["callback"]
            for eid in execution_ids
            if eid in runs and runs[eid].get("callback") is not None
        }

    async def add_deliveries(self, deliveries: Sequence[NewDelivery], cursor: int) -> int:
        now, added = time.time(), 0
        for n in deliveries:
            if (n.event_id, n.url) in self._keys or n.id in self.deliveries:
                continue
            self._keys.add((n.event_id, n.url))
            self.deliveries[n.id] = Delivery(
                n.id,
                n.event_id,
                n.execution_id,
                n.url,
                n.event_type,
                n.payload,
                DeliveryStatus.PENDING.value,
                0,
                now,
                now,
                None,
                None,
            )
            added += 1
        self._cursor = max(self._cursor, cursor)
        return added

    async def next_due(self) -> float | None:
        pending = [
            x.next_attempt_at
            for x in self.deliveries.values()
            if x.status == DeliveryStatus.PENDING
        ]
        return min(pending, default=None)

    async def claim_due(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        now = time.time()
        due = [
            x
            for x in self.deliveries.values()
            if x.status == DeliveryStatus.PENDING
            and x.next_attempt_at <= now
            and self.leases.get(x.id, ("", 0.0))[1] < now
        ]
        due.sort(key=lambda x: (x.next_attempt_at, x.event_id))
        for x in due[:limit]:
            self.leases[x.id] = (owner, now + lease_s)
        return due[:limit]

    async def settle(self, delivery_id: str, owner: str, result: DeliveryResult) -> bool:
        held = self.leases.get(delivery_id)
        if held is None or held[0] != owner:
            return False
        del self.leases[delivery_id]
        x = self.deliveries[delivery_id]
        self.deliveries[delivery_id] = replace(
            x,
            status=result.status,
            attempts=x.attempts + 1,
            last_error=result.error,
            next_attempt_at=result.next_attempt_at or x.next_attempt_at,
            delivered_at=now_iso() if result.status == DeliveryStatus.DELIVERED else None,
        )
        return True

    async def release(self, owner_prefix: str) -> None:
        for delivery_id, (owner, _) in list(self.leases.items()):
            if owner.startswith(owner_prefix):
                del self.leases[delivery_id]

    async def deliveries_of(self, execution_id: str, limit: int) -> list[Delivery]:
        mine = sorted(
            (x for x in self.deliveries.values() if x.execution_id == execution_id),
            key=lambda x: (x.event_id, x.url),
        )
        return mine[-limit:] if limit > 0 else []
