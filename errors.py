"""The service's exceptions; callers catch the base class.

WorkflowError
├── WorkflowNotFound          → 404
├── ExecutionNotFound         → 404
├── GraphValidationError      → 422
│   ├── UnsupportedNodeTypes  → 422 at submit, no execution row
│   └── CycleDetected         → the execution fails, no node runs
├── InvalidRequest            → 422 (a callback without CALLBACK_SECRET, or to a denied address)
├── Conflict                  → 409
│   └── DuplicateExecution    (create_execution: the id, or a concurrent same-key submit)
├── NodeError                 → a node ends in `error`
│   ├── NodeConfigError       (never retried)
│   ├── NodeTimeout           (retried for network-bound types)
│   └── NodeExecutionError    (retried when `retryable`)
└── EntityStoreError          a fetchData/saveRecords store operation (the node wraps it)
    └── EntityNotFound
"""


class WorkflowError(Exception):
    """Workflow service error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class WorkflowNotFound(WorkflowError):
    """Workflow not found."""


class ExecutionNotFound(WorkflowError):
    """Execution not found."""


class GraphValidationError(WorkflowError):
    """The workflow definition is invalid."""


class UnsupportedNodeTypes(GraphValidationError):
    """The workflow contains node types this service does not implement."""


class CycleDetected(GraphValidationError):
    """Circular dependency detected in workflow."""


class InvalidRequest(WorkflowError):
    """The request cannot be accepted."""


class Conflict(WorkflowError):
    """The request conflicts with the current state."""


class DuplicateExecution(Conflict):
    """An execution with this id, or a concurrent submit with this Idempotency-Key, exists."""


class NodeError(WorkflowError):
    """The node failed."""

    retryable = False
    attempts: int | None = None


class NodeConfigError(NodeError):
    """The node configuration is invalid."""


class NodeTimeout(NodeError):
    """The node timed out."""

    retryable = True


class NodeExecutionError(NodeError):
    """The node failed while running."""

    def __init__(self, message: str | None = None, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class EntityStoreError(WorkflowError):
    """A fetchData/saveRecords database operation failed."""


class EntityNotFound(EntityStoreError):
    """No entity has this id."""
