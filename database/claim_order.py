"""The order in which workers claim queued executions (issue 11): priorities with aging, rotation
across organizations within a priority, and a cap on each organization's running executions.

Each queued run carries `priority` (0 high, 1 normal, 2 low), `orgGroup` (its organization, ""
for none: one group) and `turn`, its place in the rotation, given at submit: one more than the
latest turn its organization has queued at that priority, and never less than the head of that
priority's queue (the smallest queued turn). An organization's burst of 10,000 thus takes turns
head, head+1, …, and another organization's single submit gets the head's turn: it is claimed
right after the head (ties go to the earlier submit). Claims order by (level, turn, seq), where
the level is the priority, one higher for a normal or low run queued longer than
PRIORITY_AGING_SECONDS. The SQL and memory stores share these rules.
"""

import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from states import RunState

PriorityName = Literal["high", "normal", "low"]
PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
"""The execute body's `priority` values and their stored ranks (smaller is claimed first)."""
DEFAULT_PRIORITY = PRIORITIES["normal"]
LEVELS = tuple(sorted(PRIORITIES.values()))
CANDIDATE_SLACK = 16
"""Rows read per candidate stream beyond the claim's limit (some go to the per-org cap)."""


_NAMES: dict[int, PriorityName] = {0: "high", 1: "normal", 2: "low"}


def priority_name(rank: int) -> PriorityName:
    """The wire name of a stored rank."""
    return _NAMES.get(rank, "normal")


def org_group(organization_id: str | None) -> str:
    """The rotation group of an organization: executions without one form the group ""."""
    return organization_id or ""


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    """PRIORITY_AGING_SECONDS and MAX_CONCURRENT_PER_ORG, as the worker passes them to claims."""

    aging_s: float = 300.0
    max_per_org: int | None = None

    def cutoff_ns(self, now: float) -> int:
        """Runs submitted (their `seq`, ns since the epoch) before this have aged."""
        return int((now - self.aging_s) * 1e9)


DEFAULT_POLICY = ClaimPolicy()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A queued run the claim may take."""

    execution_id: str
    priority: int
    org: str
    turn: int
    seq: int

    def level(self, cutoff_ns: int) -> int:
        """Its priority, one level higher once it has waited past the aging cutoff."""
        return self.priority - 1 if self.priority > 0 and self.seq < cutoff_ns else self.priority


def pick(
    candidates: Iterable[Candidate],
    limit: int,
    *,
    cutoff_ns: int,
    running: Mapping[str, int],
    max_per_org: int | None,
) -> list[Candidate]:
    """Up to `limit` candidates in claim order, at most `max_per_org` running per organization
    (`running`: what each already runs)."""
    taken: list[Candidate] = []
    load = dict(running)
    seen: set[str] = set()
    for c in sorted(candidates, key=lambda c: (c.level(cutoff_ns), c.turn, c.seq)):
        if len(taken) >= limit:
            break
        if c.execution_id in seen:
            continue
        seen.add(c.execution_id)
        if max_per_org is not None and load.get(c.org, 0) >= max_per_org:
            continue
        load[c.org] = load.get(c.org, 0) + 1
        taken.append(c)
    return taken


def next_turns(
    rows: Iterable[tuple[str, int]],
    head: Mapping[int, int | None],
    last: Mapping[tuple[str, int], int | None],
) -> list[int]:
    """The turns of new runs given as (org group, priority), in submission order: `head[p]` is
    the smallest queued turn at priority p, `last[(org, p)]` the org's largest (None: none)."""
    latest = dict(last)
    turns = []
    for org, priority in rows:
        previous = latest.get((org, priority))
        turn = max(head.get(priority) or 0, -1 if previous is None else previous + 1)
        turns.append(turn)
        latest[(org, priority)] = turn
    return turns


class TurnBook:
    """`sql_claims.assign_turns` for the memory store without scanning it: each priority's
    queued turns in a heap (runs that left the queue are dropped when they reach the top) and
    each organization's latest turn with its run."""

    def __init__(self) -> None:
        self._heads: dict[int, list[tuple[int, int, str]]] = {}
        self._latest: dict[tuple[str, int], tuple[int, str]] = {}

    def next(self, runs: Mapping[str, Mapping[str, Any]], eid: str, org: str, priority: int) -> int:
        """The turn of the new run `eid` (not yet in `runs`), and note it."""
        heap = self._heads.setdefault(priority, [])
        while heap and not _queued(runs.get(heap[0][2])):
            heapq.heappop(heap)
        latest = self._latest.get((org, priority))
        previous = latest[0] if latest is not None and _queued(runs.get(latest[1])) else None
        (turn,) = next_turns(
            [(org, priority)], {priority: heap[0][0] if heap else None}, {(org, priority): previous}
        )
        heapq.heappush(heap, (turn, len(heap), eid))
        self._latest[(org, priority)] = (turn, eid)
        return turn


def _queued(run: Mapping[str, Any] | None) -> bool:
    return run is not None and run["state"] == RunState.QUEUED


def memory_order(
    runs: Mapping[str, Mapping[str, Any]], limit: int, now: float, policy: ClaimPolicy
) -> list[str]:
    """The memory store's claim: expired leases first (by submission), then queued runs in
    claim order under the per-org cap (rows without the claim columns have SQL's defaults)."""
    expired = sorted(
        (
            eid
            for eid, r in runs.items()
            if r["state"] == RunState.RUNNING
            and r["leaseExpiresAt"] is not None
            and r["leaseExpiresAt"] < now
        ),
        key=lambda eid: runs[eid]["seq"],
    )[:limit]
    running: dict[str, int] = {}
    for r in runs.values():
        if r["state"] == RunState.RUNNING:
            org = r.get("orgGroup", "")
            running[org] = running.get(org, 0) + 1
    queued = (
        Candidate(
            eid,
            r.get("priority", DEFAULT_PRIORITY),
            r.get("orgGroup", ""),
            r.get("turn", 0),
            r["seq"],
        )
        for eid, r in runs.items()
        if r["state"] == RunState.QUEUED
    )
    chosen = pick(
        queued,
        limit - len(expired),
        cutoff_ns=policy.cutoff_ns(now),
        running=running,
        max_per_org=policy.max_per_org,
    )
    return list(itertools.chain(expired, (c.execution_id for c in chosen)))
