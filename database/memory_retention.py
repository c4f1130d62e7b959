"""Retention on the in-memory store (`database.memory.MemoryStore`), with the SQL rules of
`database.retention`: the same candidates, children first at most `row_limit` per call, the
execution's own rows last."""

import time
from collections.abc import Sequence
from typing import Any

from database.retention import Pruned, RetentionPolicy
from states import TERMINAL_STATUSES, DeliveryStatus, RunState

_leases: dict[tuple[int, str], tuple[str, float]] = {}
"""(id of the store, lease name) -> (owner, expiry)."""


def _ended(store: Any, eid: str) -> bool:
    run, row = store.runs.get(eid), store.executions.get(eid)
    if run is None or row is None:
        return False
    return bool(run["state"] == RunState.DONE and row["status"] in TERMINAL_STATUSES)


def _settled(store: Any, eid: str) -> bool:
    """No callback of `eid` waits for an attempt or for the dispatcher."""
    run = store.runs[eid]
    deliveries = store.callbacks.deliveries.values()
    if any(x.execution_id == eid and x.status == DeliveryStatus.PENDING for x in deliveries):
        return False
    if run.get("callback") is not None:
        cursor = store.callbacks._cursor
        if any(e.execution_id == eid and e.id > cursor for e in store.events):
            return False
    return True


def memory_candidates(
    store: Any, policy: RetentionPolicy, limit: int, cutoff: str | None
) -> list[str]:
    finished = [eid for eid in store.runs if _ended(store, eid)]
    finished.sort(key=lambda eid: store.runs[eid]["seq"])
    chosen: set[str] = set()
    if cutoff is not None:
        for eid in finished:
            row = store.executions[eid]
            if (row["completedAt"] or row["createdAt"]) < cutoff:
                chosen.add(eid)
    if policy.max_per_org is not None:
        groups: dict[str, list[str]] = {}
        for eid in finished:
            groups.setdefault(store.executions[eid]["organizationId"] or "", []).append(eid)
        for members in groups.values():
            chosen.update(members[: max(0, len(members) - policy.max_per_org)])
    return [eid for eid in finished if eid in chosen and _settled(store, eid)][:limit]


def memory_prune(store: Any, execution_ids: Sequence[str], row_limit: int) -> Pruned:
    started = time.perf_counter()
    ids, budget = set(execution_ids), row_limit
    for eid in ids:
        rows = store.logs.get(eid, [])
        gone = min(budget, len(rows))
        del rows[:gone]
        budget -= gone
        if not rows:
            store.logs.pop(eid, None)
    if budget > 0:
        mine = [e for e in store.events if e.execution_id in ids][:budget]
        if mine:
            drop = {e.id for e in mine}
            store._event_floor = max(store._event_floor, store.events[-1].id)
            store.events = [e for e in store.events if e.id not in drop]
            budget -= len(mine)
    if budget > 0:
        callbacks = store.callbacks
        mine_d = [x for x in callbacks.deliveries.values() if x.execution_id in ids][:budget]
        for x in mine_d:
            del callbacks.deliveries[x.id]
            callbacks.leases.pop(x.id, None)
            callbacks._keys.discard((x.event_id, x.url))
        budget -= len(mine_d)
    done: list[str] = []
    if budget > 0:
        done = [eid for eid in ids if eid in store.runs and store.runs[eid]["state"] == "done"]
        for key, (eid, _hash, _exp) in list(store.keys.items()):
            if eid in done:
                del store.keys[key]
        for eid in done:
            store.executions.pop(eid, None)
            store.runs.pop(eid, None)
    return Pruned(row_limit - budget, sorted(done), time.perf_counter() - started)


def memory_lease(store: Any, name: str, owner: str, now: float, lease_s: float) -> bool:
    key = id(store), name
    held = _leases.get(key)
    if held is not None and held[0] != owner and held[1] >= now:
        return False
    _leases[key] = (owner, now + lease_s)
    return True


def memory_drop_lease(store: Any, name: str, owner: str) -> None:
    key = id(store), name
    if _leases.get(key, ("", 0.0))[0] == owner:
        del _leases[key]
