"""What each part of the service needs from the store, as Protocols, and the values they pass.

Three audiences, one interface each: the HTTP API (`ApiStore`), the worker's queue and the
runner around the engine (`QueueStore`), and the engine's checkpoints (`Recorder`). Database-backed
node types get `EntityStore`. A backend (`database.sql.SqlStore`, `database.memory.MemoryStore`)
implements all of them; see `Store`. Pure: importing this module touches no database library.
"""

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from database.claim_order import DEFAULT_POLICY, DEFAULT_PRIORITY, ClaimPolicy
from states import ExecutionStatus, NodeStatus

Row = dict[str, Any]
"""A stored row as a mapping of column name to value (JSON columns still as text)."""


EXECUTION_COLUMNS = (
    "id",
    "workflowId",
    "organizationId",
    "status",
    "triggerType",
    "inputs",
    "currentNodeId",
    "nodeResults",
    "finalOutput",
    "error",
    "createdAt",
    "startedAt",
    "completedAt",
    "triggeredByName",
    "versionNumber",
)
"""The columns of `workflow_executions` (the Node backend's), keys of `ApiStore.get_execution`."""
RUN_COLUMNS = (
    "workflowName",
    "definition",
    "requestedMode",
    "mode",
    "modeReason",
    "attempts",
    "resumedAt",
    "retryOf",
    "flowRunId",
    "totalNodes",
    "completedNodes",
    "failedNodes",
    "skippedNodes",
    "state",
    "dataOrganizationId",
    "callback",
    "priority",
    "workflowVersion",
    "workflowHash",
)
"""The service's own state `get_execution` joins in (None where the service did not create the
row)."""
VERSION_COLUMNS = (
    "id",
    "workflowId",
    "organizationId",
    "version",
    "name",
    "data",
    "description",
    "createdByName",
    "createdAt",
)
"""The `workflow_versions` columns the version reads answer (the Node backend's table)."""
HISTORY_RUN_COLUMNS = ("workflowVersion", "workflowHash")
"""The service's own columns the execution lists add to each row (None where not ours)."""
LIST_COLUMNS = ("id", "workflowId", "status", "createdAt", "startedAt", "completedAt", "error")
"""The keys of each `ApiStore.list_executions` row."""
OVERVIEW_COLUMNS = (*LIST_COLUMNS, "organizationId", "workflowName", *HISTORY_RUN_COLUMNS)
"""The keys of each `ApiStore.list_all_executions` row (`workflowName`: the service's, else the
stored workflow's)."""


@dataclass(frozen=True)
class LogRow:
    """One `execution_logs` row the engine asks the store to write."""

    node_id: str
    node_type: str
    node_label: str
    status: NodeStatus
    input_json: str | None = None
    output_json: str | None = None
    error: str | None = None
    duration_ms: int | None = None
    attempts: int | None = None
    """How many attempts a settled node took (its envelope's `attempts`), for its event."""


@dataclass(frozen=True)
class Claim:
    """An execution a worker just took ownership of."""

    execution_id: str
    workflow_id: str
    organization_id: str | None
    """The organization its data nodes act for: the stored workflow's org, else the row's."""
    status: str
    inputs: str | None
    node_results: str | None
    definition: str
    requested_mode: str
    attempts: int
    flow_run_id: str | None
    """The Prefect flow run of the previous attempt, if any (to be marked Crashed)."""
    workflow_name: str | None
    crash_resumes: int = 0
    """How often it was resumed after its worker died or lost its lease with a node in flight
    (this claim included); a graceful give-back never counts."""
    crashed_node: str | None = None
    """The node in flight when this claim's previous owner crashed (None: not a crash resume)."""
    owner: str | None = None
    """The worker holding its lease, set by that worker: every write of the run is fenced by
    it (`Recorder.checkpoint`). None: unfenced (tests driving a run by hand)."""


@dataclass(frozen=True)
class IdempotencyKey:
    """An `Idempotency-Key` submit: the key, a hash of the request body, and how long it holds."""

    key: str
    request_hash: str
    ttl_s: float


@dataclass(frozen=True)
class NewExecution:
    """A pending execution to insert and queue (`ApiStore.create_execution`)."""

    execution_id: str
    workflow_id: str
    workflow_name: str | None
    organization_id: str | None
    inputs: dict[str, Any]
    definition: str
    """The validated workflow definition the run executes (JSON text)."""
    mode: str
    retry_of: str | None = None
    node_results: str | None = None
    """Results adopted from an earlier execution (a retry), JSON text."""
    data_organization_id: str | None = None
    """The organization its data nodes act for (the stored workflow's, else
    `organization_id`), kept in the service's own table: the row's organizationId may be null."""
    callback: str | None = None
    """Where its events are POSTed: `{"url", "events"}` JSON text (`database.callbacks`)."""
    priority: int = DEFAULT_PRIORITY
    """Its claim priority (`database.claim_order.PRIORITIES`: 0 high, 1 normal, 2 low)."""
    workflow_version: int | None = None
    """The `workflow_versions.version` it runs; None for the draft or an inline workflow."""
    workflow_hash: str | None = None
    """sha256 hex of the RFC 8785 JSON of the definition's {nodes, connections} as stored."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What one engine checkpoint commits (`Recorder.checkpoint`)."""

    rows: list[LogRow]
    """Log rows of settled nodes and of nodes just started."""
    current_node_id: str | None
    node_results: str | None
    """All node results so far (JSON text), or None when unchanged."""
    counts: dict[str, int]
    """Empty, or completedNodes, failedNodes and skippedNodes."""


@dataclass(frozen=True, slots=True)
class RunStart:
    """How a run starts (`QueueStore.start`)."""

    total_nodes: int
    mode: str
    mode_reason: str | None
    flow_run_id: str | None = None
    resumed: bool = False
    """A resume (the claim's attempts > 1): the event is `execution.resumed`, not `started`."""


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a run ends (`QueueStore.finish`)."""

    status: ExecutionStatus
    error: str | None
    node_results: str | None
    """All node results (JSON text; also the final output), or None to keep the stored ones."""


@dataclass(frozen=True, slots=True)
class ExecutionQuery:
    """Which executions `ApiStore.list_all_executions` answers, newest first (createdAt, then
    id, both descending; rows without createdAt last)."""

    limit: int
    status: str | None = None
    workflow_id: str | None = None
    before: tuple[str | None, str] | None = None
    """(createdAt, id) of the previous page's last row: only rows after it in that order."""
    organization: str | None = None
    """An organization key's org: only executions whose row is of that org."""


class Recorder(Protocol):
    """The engine's checkpoints."""

    async def checkpoint(
        self, execution_id: str, checkpoint: Checkpoint, owner: str | None = None
    ) -> bool:
        """Commit settled and started nodes atomically. False when the row left `running`
        (cancelled): then only the final rows of settled nodes are written, no `running` rows.
        Fenced by `owner`'s lease when given: False, and nothing written (no event either), once
        another worker took the run over."""
        ...


class ApiStore(Protocol):
    """What the HTTP API reads and writes. `organization` scopes a read or action to an
    organization key's org (None: no filter, a service key): an execution of another org is
    answered exactly like an unknown one."""

    @property
    def callbacks(self) -> "CallbackStore":
        """The callbacks' outbox (`database.callbacks`)."""
        ...

    async def get_workflow(self, workflow_id: str, organization: str | None = None) -> Row | None:
        """The stored workflow's id, name, data and organizationId; with `organization`, only
        a workflow of that org or of none."""
        ...

    async def list_versions(self, workflow_id: str, limit: int) -> list[Row]:
        """The workflow's `workflow_versions` rows, newest first, at most `limit`: the
        `VERSION_COLUMNS` but `data`, its length in characters as `size`, and `published`
        (whether `workflows.publishedVersionId` names it)."""
        ...

    async def get_version(self, workflow_id: str, version: int) -> Row | None:
        """The workflow's version `version` (`VERSION_COLUMNS` and `published`), or None."""
        ...

    async def get_published_version(self, workflow_id: str) -> Row | None:
        """The version `workflows.publishedVersionId` names (of that workflow), or None."""
        ...

    async def create_execution(
        self, new: NewExecution, *, idempotency: IdempotencyKey | None = None
    ) -> tuple[str, str] | None:
        """Insert the pending execution row and queue it, in one transaction. With
        `idempotency`, an unexpired earlier submit with the same key and organization wins:
        nothing is inserted and its (execution id, request hash) is returned instead.
        Raises `errors.DuplicateExecution` when the execution id exists, or when a concurrent
        submit with the same key inserted first (a second call then finds its row)."""
        ...

    async def get_execution(self, execution_id: str, organization: str | None = None) -> Row | None:
        """The execution row joined with the service's own state (those keys None where the
        service did not create the row)."""
        ...

    async def get_logs(
        self, execution_id: str, last: int | None = None, organization: str | None = None
    ) -> list[Row]:
        """Log rows oldest first; with `last`, only the `last` most recent. With
        `organization`, none unless the execution row is of that org."""
        ...

    async def log_counts(self, execution_id: str) -> dict[str, int]:
        """Distinct nodes per log status, for rows the service did not create."""
        ...

    async def cancel(
        self, execution_id: str, organization: str | None = None
    ) -> tuple[str | None, bool]:
        """Cancel a pending/running execution: (previous status or None if unknown, cancelled?)."""
        ...

    async def list_executions(
        self, workflow_id: str, limit: int, organization: str | None = None
    ) -> tuple[list[Row], int]:
        """The newest `limit` executions of a workflow, and how many it has in all."""
        ...

    async def list_all_executions(self, query: ExecutionQuery) -> tuple[list[Row], dict[str, int]]:
        """A page of executions of every workflow (`OVERVIEW_COLUMNS`), and how many are
        `pending` and `running` among those of the query's organization and workflow (its
        status filter and cursor aside)."""
        ...


class QueueStore(Protocol):
    """What the worker needs: the store is the queue; leases make a claim expire."""

    async def has_queued(self) -> bool:
        """Cheap read: is anything claimable (queued, or running with an expired lease)?"""
        ...

    async def claim(
        self, owner: str, limit: int, lease_s: float, policy: ClaimPolicy = DEFAULT_POLICY
    ) -> list[Claim]:
        """Take up to `limit` claimable executions: those whose lease expired, then queued ones
        in `database.claim_order`'s order (priority with aging, rotation across organizations,
        at most `policy.max_per_org` running per organization)."""
        ...

    async def renew_leases(self, owner: str, running: Iterable[str], lease_s: float) -> None:
        """Extend the leases of `owner`'s executions in `running`; give back (lease expired at
        once) every other unfinished execution `owner` holds."""
        ...

    async def release(self, owner: str) -> None:
        """Give back every unfinished execution of `owner` (graceful shutdown)."""
        ...

    async def release_instance(self, instance: str) -> None:
        """At start-up: give back what a previous run of this instance (`<instance>:…` owners)
        still held."""
        ...

    async def cancelled_among(self, execution_ids: Iterable[str]) -> set[str]:
        """Those of `execution_ids` whose status is `cancelled`."""
        ...

    async def start(self, execution_id: str, run: RunStart, owner: str | None = None) -> bool:
        """Mark the execution running; False when it is no longer pending/running (cancelled).
        Fenced by `owner`'s lease as `Recorder.checkpoint` is."""
        ...

    async def finish(self, execution_id: str, end: RunEnd, owner: str | None = None) -> bool:
        """Write the terminal status unless the row is no longer pending/running (never
        overwrites `cancelled`); the queue state becomes done either way. Fenced by `owner`'s
        lease as `Recorder.checkpoint` is (then not even the queue state changes)."""
        ...

    async def mark_done(self, execution_id: str, owner: str | None = None) -> bool:
        """Take the execution off the queue without touching its status (it was cancelled);
        False when it is unknown or, with `owner`, another worker holds its lease."""
        ...


@dataclass(frozen=True)
class NewRecord:
    """One record to save into an entity: `values` maps record keys to stored strings."""

    created_at: str
    values: dict[str, str]


@dataclass(frozen=True)
class EntitySave:
    entity_name: str | None
    saved_ids: list[str]
    created_properties: list[tuple[str, str]]
    """(name, type) of every property created for keys the entity did not have."""


@dataclass(frozen=True, slots=True)
class GenericSave:
    """A saveRecords write into a generic table (`EntityStore.save_generic_records`)."""

    table_name: str
    rows: Sequence[tuple[str, str]]
    """(id, data JSON) per record."""
    upsert: bool
    workflow_id: str | None
    execution_id: str | None
    now: str
    organization_id: str | None = None
    """The run's data organization: rows are written with it and only its rows are updated."""


class EntityStore(Protocol):
    """The data of fetchData and saveRecords: the Node backend's entity tables and the generic
    tables saveRecords creates (contract §2.5). Errors are `EntityStoreError`s. A run touches
    only its data organization's data: an entity of another org (or, for a run without org,
    any entity that has one) is EntityNotFound."""

    async def fetch_entity_records(
        self, entity_id: str, organization: str | None
    ) -> tuple[str | None, list[Row]]:
        """(entity name, records) with values keyed by property name, ordered by createdAt
        then id. Raises EntityNotFound."""
        ...

    async def save_entity_records(
        self,
        entity_id: str,
        organization: str | None,
        new_records: Sequence[NewRecord],
        types: dict[str, str],
    ) -> EntitySave:
        """Create the properties the entity lacks (name → type), then the records and their
        values, in one transaction."""
        ...

    async def save_generic_records(self, save: GenericSave) -> int:
        """Write `save.rows` into `save.table_name` (created if missing) in one transaction;
        returns how many existing rows were updated (upsert)."""
        ...


@dataclass(frozen=True, slots=True)
class Event:
    """One stored execution event (`EventStore`)."""

    id: int
    """Increases along every stream (global, in commit order)."""
    execution_id: str
    workflow_id: str | None
    organization_id: str | None
    """What `ApiStore`'s organization filter compares for this execution (the row's org)."""
    type: str
    """execution.queued|started|resumed|completed|failed|cancelled, node.started|completed|
    failed|skipped (`database.events.EVENT_TYPES`)."""
    data: str
    """The event's JSON object as text, "id" included."""


class EventStore(Protocol):
    """The execution events each store writes in the same transaction as what they report, so
    an event is visible only after what it reports is committed, and ids become visible in id
    order."""

    async def events_after(
        self, after: int, *, execution_id: str | None = None, limit: int = 500
    ) -> list[Event]:
        """Events with id > after (of one execution when given), oldest first, at most limit."""
        ...

    async def last_event_id(self) -> int:
        """The highest committed event id (0 when none)."""
        ...


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A callback delivery the dispatcher adds for one event (`CallbackStore.add_deliveries`)."""

    id: str
    """The webhook-id: the same on every attempt."""
    event_id: int
    execution_id: str
    url: str
    event_type: str
    payload: str
    """The request body: the event's JSON text."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A stored callback delivery (`callback_deliveries`); times are epoch seconds."""

    id: str
    event_id: int
    execution_id: str
    url: str
    event_type: str
    payload: str
    status: str
    """`states.DeliveryStatus`: pending, delivered or failed."""
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None
    delivered_at: str | None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How an attempt ended (`CallbackStore.settle`)."""

    status: str
    """delivered, failed, or pending again (then retried at `next_attempt_at`)."""
    error: str | None = None
    next_attempt_at: float | None = None


class CallbackStore(Protocol):
    """The callbacks' outbox: deliveries added from the event log (with the dispatcher's cursor
    in the same transaction), claimed with a lease by the senders, settled per attempt."""

    async def cursor(self) -> int:
        """The id of the last event the dispatcher turned into deliveries (0 at first)."""
        ...

    async def callbacks_of(self, execution_ids: Collection[str]) -> dict[str, str]:
        """The callback JSON text of those executions that have one."""
        ...

    async def add_deliveries(self, deliveries: Sequence[NewDelivery], cursor: int) -> int:
        """Insert the deliveries not there yet (unique on event id + url) and advance the
        cursor to `cursor` (never back), in one transaction; how many were inserted."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest pending delivery is due (None: none pending); a cheap read."""
        ...

    async def claim_due(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        """Up to `limit` pending deliveries due now, oldest due first, leased to `owner`: no
        other sender claims them until the lease expires."""
        ...

    async def settle(self, delivery_id: str, owner: str, result: DeliveryResult) -> bool:
        """Record one attempt of a delivery `owner` holds (its lease ends); False when it no
        longer holds it."""
        ...

    async def release(self, owner_prefix: str) -> None:
        """Give back the leases of owners starting with `owner_prefix` (a stop, or a restart
        of the instance), so what they held is sent again at once."""
        ...

    async def deliveries_of(self, execution_id: str, limit: int) -> list[Delivery]:
        """The execution's deliveries, by event id, the latest `limit`."""
        ...


class Store(ApiStore, QueueStore, Recorder, EventStore, Protocol):
    """A whole backend, as `database.open_store` returns it."""

    @property
    def entities(self) -> EntityStore: ...

    async def close(self) -> None: ...


class WorkerStore(QueueStore, Recorder, Protocol):
    """What a worker process and its runner need."""
