"""The service's vocabulary: the statuses and states every module compares, with their sets."""

from enum import StrEnum


class ExecutionStatus(StrEnum):
    """`workflow_executions.status` (contract §2): what the Node backend and the API show."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)
ACTIVE_STATUSES = frozenset({ExecutionStatus.PENDING, ExecutionStatus.RUNNING})
RETRYABLE_STATUSES = frozenset({ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
CHECKPOINT_STATUSES = frozenset({ExecutionStatus.RUNNING})
"""The statuses a checkpoint still writes into (a start or a finish: `ACTIVE_STATUSES`)."""


class NodeStatus(StrEnum):
    """`execution_logs.status` of one node's row."""

    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    SKIPPED = "skipped"


SETTLED_NODE_STATUSES = frozenset({NodeStatus.COMPLETED, NodeStatus.ERROR, NodeStatus.SKIPPED})
"""A node's final log statuses (written even after a cancel, unlike `running` rows)."""


class RunState(StrEnum):
    """`wos_executions.state`: the service's queue state of an execution."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Outcome(StrEnum):
    """How one run of an execution ended, as the engine and the runner report it."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """Drained before the end (shutdown): nothing terminal was written; a later claim resumes."""


class ExecutionMode(StrEnum):
    """Where an execution's nodes run: Prefect flow/task runs, or plain asyncio in the worker."""

    PREFECT = "prefect"
    INLINE = "inline"


class DeliveryStatus(StrEnum):
    """`callback_deliveries.status`: a callback delivery waiting for (another) attempt, done, or
    given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
