"""An in-memory store: every interface of `database.interfaces`, with the SQL stores' semantics.

For in-process tests of the engine, runner and API (like procrastinate's `InMemoryConnector`):
statuses never overwrite `cancelled`, leases expire, claims follow submission order,
idempotency keys expire, logs keep their order, and saveRecords refuses the same table names.
Each method runs without awaiting, so it is atomic on the event loop. `reset()` empties it.
`open_store("memory://<name>")` shares one store per name within a process (the API and an
in-process worker), `memory:` alone opens a fresh one.
"""

import itertools
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from database.claim_order import (
    DEFAULT_POLICY,
    ClaimPolicy,
    TurnBook,
    memory_order,
    org_group,
)
from database.events import (
    QUEUED,
    RESUMED,
    STARTED,
    Draft,
    cancel_draft,
    end_draft,
    node_drafts,
)
from database.ids import log_row
from database.interfaces import (
    EXECUTION_COLUMNS,
    HISTORY_RUN_COLUMNS,
    LIST_COLUMNS,
    RUN_COLUMNS,
    Checkpoint,
    Claim,
    ExecutionQuery,
    IdempotencyKey,
    NewExecution,
    Row,
    RunEnd,
    RunStart,
)
from database.listing import memory_list_all
from database.memory_callbacks import MemoryCallbackStore
from database.memory_entities import MemoryEntityStore
from database.memory_events import MemoryEvents
from database.memory_versions import MemoryVersions
from errors import DuplicateExecution
from jsonutil import dump_json, now_iso
from states import (
    ACTIVE_STATUSES,
    CHECKPOINT_STATUSES,
    SETTLED_NODE_STATUSES,
    ExecutionStatus,
    NodeStatus,
    RunState,
)

_named: "weakref.WeakValueDictionary[str, MemoryStore]" = weakref.WeakValueDictionary()


def open_memory_store(name: str) -> "MemoryStore":
    """The live store of that name, or a new one (`""`: always a new one)."""
    if not name:
        return MemoryStore()
    store = _named.get(name)
    if store is None:
        store = _named[name] = MemoryStore()
    return store


class MemoryStore(MemoryEvents, MemoryVersions):
    """`Store` in dictionaries. Rows are dicts keyed like the SQL columns."""

    def __init__(self) -> None:
        self.entities = MemoryEntityStore()
        self.callbacks = MemoryCallbackStore(self.runs_of)
        self.reset()

    def reset(self) -> None:
        """Forget everything (executions, runs, logs, keys, workflows, entities, tables)."""
        self.workflows: dict[str, Row] = {}
        self.versions: list[Row] = []
        self.executions: dict[str, Row] = {}
        self.runs: dict[str, Row] = {}
        self.logs: dict[str, list[Row]] = {}
        self.keys: dict[tuple[str, str], tuple[str, str, float]] = {}
        self.events = []
        self._event_floor = 0
        self._seq = itertools.count()
        self._turns = TurnBook()
        self.entities.reset()
        self.callbacks.reset()

    async def close(self) -> None:
        pass

    def runs_of(self) -> dict[str, Row]:
        """The service's rows by execution id (the callback store reads their callbacks)."""
        return self.runs

    def put_workflow(
        self, workflow_id: str, data: str, name: str = "WF", organization_id: str | None = None
    ) -> None:
        """Test helper: the row the Node backend would have written."""
        self.workflows[workflow_id] = {
            "id": workflow_id,
            "name": name,
            "data": data,
            "organizationId": organization_id,
        }

    async def get_workflow(self, workflow_id: str, organization: str | None = None) -> Row | None:
        row = self.workflows.get(workflow_id)
        if row is None:
            return None
        if organization is not None and row["organizationId"] not in (None, organization):
            return None
        return dict(row)

    async def create_execution(
        self, new: NewExecution, *, idempotency: IdempotencyKey | None = None
    ) -> tuple[str, str] | None:
        eid = new.execution_id
        if eid in self.executions or eid in self.runs:
            raise DuplicateExecution(f"An execution with id {eid!r} already exists")
        if idempotency is not None:
            match = idempotency.key, new.organization_id or ""
            earlier = self.keys.get(match)
            if earlier is not None and earlier[2] > time.time():
                return earlier[0], earlier[1]
            self.keys[match] = (eid, idempotency.request_hash, time.time() + idempotency.ttl_s)
        now = now_iso()
        row = dict.fromkeys(EXECUTION_COLUMNS)
        row.update(
            id=eid,
            workflowId=new.workflow_id,
            organizationId=new.organization_id,
            status=ExecutionStatus.PENDING.value,
            triggerType="manual",
            inputs=dump_json(new.inputs),
            createdAt=now,
            nodeResults=new.node_results,
        )
        self.executions[eid] = row
        run = dict.fromkeys(RUN_COLUMNS)
        run.update(
            seq=time.time_ns() + next(self._seq),  # submission time (aging), unique
            workflowName=new.workflow_name,
            definition=new.definition,
            requestedMode=new.mode,
            state=RunState.QUEUED.value,
            attempts=0,
            crashResumes=0,
            completedNodes=0,
            failedNodes=0,
            skippedNodes=0,
            retryOf=new.retry_of,
            dataOrganizationId=new.data_organization_id,
            callback=new.callback,
            priority=new.priority,
            orgGroup=org_group(new.organization_id),
            turn=self._turns.next(self.runs, eid, org_group(new.organization_id), new.priority),
            workflowVersion=new.workflow_version,
            workflowHash=new.workflow_hash,
            leaseOwner=None,
            leaseExpiresAt=None,
        )
        self.runs[eid] = run
        self._publish(eid, [Draft(QUEUED)])
        return None

    def _execution(self, execution_id: str, organization: str | None) -> Row | None:
        """The execution row, of `organization` when given (None: any org)."""
        row = self.executions.get(execution_id)
        if row is None or organization not in (None, row["organizationId"]):
            return None
        return row

    async def get_execution(self, execution_id: str, organization: str | None = None) -> Row | None:
        row = self._execution(execution_id, organization)
        if row is None:
            return None
        run = self.runs.get(execution_id) or {}
        return {**row, **{c: run.get(c) for c in RUN_COLUMNS}}

    async def get_logs(
        self, execution_id: str, last: int | None = None, organization: str | None = None
    ) -> list[Row]:
        if organization is not None and self._execution(execution_id, organization) is None:
            return []
        rows = sorted(self.logs.get(execution_id, []), key=lambda r: (r["timestamp"], r["id"]))
        if last is not None:
            rows = rows[-last:] if last > 0 else []
        return [dict(r) for r in rows]

    async def log_counts(self, execution_id: str) -> dict[str, int]:
        nodes: dict[str, set[Any]] = {}
        for r in self.logs.get(execution_id, []):
            ids = nodes.setdefault(r["status"] or "", set())
            if r["nodeId"] is not None:  # SQL's count(distinct) skips NULLs
                ids.add(r["nodeId"])
        return {status: len(ids) for status, ids in nodes.items()}

    async def cancel(
        self, execution_id: str, organization: str | None = None
    ) -> tuple[str | None, bool]:
        row = self._execution(execution_id, organization)
        if row is None:
            return None, False
        status = row["status"] or ""
        if status not in ACTIVE_STATUSES:
            return status, False
        row.update(
            status=ExecutionStatus.CANCELLED.value,
            error="Execution cancelled by user",
            completedAt=now_iso(),
        )
        run = self.runs.get(execution_id)
        if run is not None and run["state"] == RunState.QUEUED:
            run["state"] = RunState.DONE.value
        self._publish(execution_id, [cancel_draft(row["error"])])
        return status, True

    async def list_executions(
        self, workflow_id: str, limit: int, organization: str | None = None
    ) -> tuple[list[Row], int]:
        mine = [
            r
            for r in self.executions.values()
            if r["workflowId"] == workflow_id and organization in (None, r["organizationId"])
        ]
        mine.sort(key=lambda r: (r["createdAt"] or "", r["id"]), reverse=True)
        runs = self.runs
        return [
            {c: r[c] for c in LIST_COLUMNS}
            | {c: (runs.get(r["id"]) or {}).get(c) for c in HISTORY_RUN_COLUMNS}
            for r in mine[:limit]
        ], len(mine)

    async def list_all_executions(self, query: ExecutionQuery) -> tuple[list[Row], dict[str, int]]:
        return memory_list_all(self.executions, self.runs, self.workflows, query)

    def _claimable(self, now: float) -> list[str]:
        """Queued, or running with an expired lease (a NULL lease never expires, as in SQL)."""
        ready = [
            eid
            for eid, run in self.runs.items()
            if run["state"] == RunState.QUEUED
            or (
                run["state"] == RunState.RUNNING
                and run["leaseExpiresAt"] is not None
                and run["leaseExpiresAt"] < now
            )
        ]
        return sorted(ready, key=lambda eid: self.runs[eid]["seq"])

    async def has_queued(self) -> bool:
        return bool(self._claimable(time.time()))

    async def claim(
        self, owner: str, limit: int, lease_s: float, policy: ClaimPolicy = DEFAULT_POLICY
    ) -> list[Claim]:
        now = time.time()
        claims = []
        for eid in memory_order(self.runs, limit, now, policy):
            run = self.runs[eid]
            if run["attempts"] > 0:
                run["resumedAt"] = now_iso()
            crashed = None
            if (
                run["state"] == RunState.RUNNING and run["leaseExpiresAt"]
            ):  # expired, not given back
                crashed = self._node_in_flight(eid)
                run["crashResumes"] += crashed is not None
            run.update(
                state=RunState.RUNNING.value,
                leaseOwner=owner,
                leaseExpiresAt=now + lease_s,
                attempts=run["attempts"] + 1,
            )
            row = self.executions.get(eid)
            if row is None:
                continue
            claims.append(
                Claim(
                    row["id"],
                    row["workflowId"],
                    run["dataOrganizationId"] or row["organizationId"],
                    row["status"],
                    row["inputs"],
                    row["nodeResults"],
                    run["definition"],
                    run["requestedMode"],
                    run["attempts"],
                    run["flowRunId"],
                    run["workflowName"],
                    run["crashResumes"],
                    crashed,
                )
            )
        return claims

    def _node_in_flight(self, execution_id: str) -> str | None:
        """The last node with a `running` log row and no final one (as SQL's `_crashed_nodes`)."""
        rows = self.logs.get(execution_id, [])
        settled = {r["nodeId"] for r in rows if r["status"] in SETTLED_NODE_STATUSES}
        running = [
            r
            for r in rows
            if r["status"] == NodeStatus.RUNNING
            and r["nodeId"] is not None
            and r["nodeId"] not in settled
        ]
        if not running:
            return None
        return str(max(running, key=lambda r: (r["timestamp"], r["id"]))["nodeId"])

    def _held(self, owned: Callable[[str], bool]) -> dict[str, Row]:
        """The unfinished runs whose lease owner passes `owned`."""
        return {
            eid: run
            for eid, run in self.runs.items()
            if run["state"] == RunState.RUNNING and owned(run["leaseOwner"] or "")
        }

    async def renew_leases(self, owner: str, running: Iterable[str], lease_s: float) -> None:
        ids, until = set(running), time.time() + lease_s
        for eid, run in self._held(owner.__eq__).items():
            run["leaseExpiresAt"] = until if eid in ids else 0.0

    async def release(self, owner: str) -> None:
        for run in self._held(owner.__eq__).values():
            run["leaseExpiresAt"] = 0.0

    async def release_instance(self, instance: str) -> None:
        for run in self._held(lambda owner: owner.startswith(instance + ":")).values():
            run["leaseExpiresAt"] = 0.0

    async def cancelled_among(self, execution_ids: Iterable[str]) -> set[str]:
        return {
            eid
            for eid in execution_ids
            if (row := self.executions.get(eid)) and row["status"] == ExecutionStatus.CANCELLED
        }

    def _status(self, execution_id: str) -> str | None:
        row = self.executions.get(execution_id)
        return None if row is None else row["status"]

    def _fenced(self, execution_id: str, owner: str | None) -> bool:
        """A worker's write for a run whose lease another worker took over (as SQL's)."""
        run = self.runs.get(execution_id)
        return owner is not None and (run is None or run["leaseOwner"] != owner)

    async def start(self, execution_id: str, run: RunStart, owner: str | None = None) -> bool:
        if self._fenced(execution_id, owner):
            return False
        live = self._status(execution_id) in ACTIVE_STATUSES
        if live:
            row = self.executions[execution_id]
            row.update(
                status=ExecutionStatus.RUNNING.value, startedAt=row["startedAt"] or now_iso()
            )
        if (queued := self.runs.get(execution_id)) is not None:
            queued.update(
                totalNodes=run.total_nodes,
                mode=run.mode,
                modeReason=run.mode_reason,
                flowRunId=run.flow_run_id,
            )
        if live:
            self._publish(execution_id, [Draft(RESUMED if run.resumed else STARTED)])
        return live

    async def checkpoint(
        self, execution_id: str, checkpoint: Checkpoint, owner: str | None = None
    ) -> bool:
        if self._fenced(execution_id, owner):
            return False
        live = self._status(execution_id) in CHECKPOINT_STATUSES
        now = now_iso()
        if live:
            row = self.executions[execution_id]
            if checkpoint.current_node_id is not None:
                row["currentNodeId"] = checkpoint.current_node_id
            if checkpoint.node_results is not None:
                row["nodeResults"] = checkpoint.node_results
        self.logs.setdefault(execution_id, []).extend(
            log_row(execution_id, r, now)
            for r in checkpoint.rows
            if live or r.status in SETTLED_NODE_STATUSES
        )
        if (counts := checkpoint.counts) and (run := self.runs.get(execution_id)) is not None:
            run.update({k: counts[k] for k in ("completedNodes", "failedNodes", "skippedNodes")})
        if live:
            self._publish(execution_id, node_drafts(checkpoint.rows))
        return live

    async def finish(self, execution_id: str, end: RunEnd, owner: str | None = None) -> bool:
        if self._fenced(execution_id, owner):
            return False
        live = self._status(execution_id) in ACTIVE_STATUSES
        if live:
            row = self.executions[execution_id]
            row.update(status=str(end.status), error=end.error, completedAt=now_iso())
            if end.node_results is not None:
                row.update(nodeResults=end.node_results, finalOutput=end.node_results)
            self._publish(execution_id, [end_draft(end)])
        await self.mark_done(execution_id)
        return live

    async def mark_done(self, execution_id: str, owner: str | None = None) -> bool:
        if (run := self.runs.get(execution_id)) is None or self._fenced(execution_id, owner):
            return False
        run.update(state=RunState.DONE.value, leaseExpiresAt=None)
        return True
