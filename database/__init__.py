"""The store: the Node backend's tables plus the service's own, behind the interfaces of
`database.interfaces`, on SQLite, PostgreSQL or in memory.

`open_store(url)` is the one factory; it picks the backend by the URL's scheme and imports it
only then, so importing this package does not import SQLAlchemy. Modules: `schema` (tables),
`sql` + `sql_queue` (the SQL store), `sqlite` / `postgres` (what differs per backend), `batch`
(group commit), `entities` (fetchData/saveRecords SQL), `memory` + `memory_entities` (the
in-memory store), `generic` (saveRecords table names), `ids`.
"""

import importlib
import logging

from database.ids import new_execution_id, new_log_id
from database.interfaces import (
    ApiStore,
    Checkpoint,
    Claim,
    EntitySave,
    EntityStore,
    Event,
    EventStore,
    GenericSave,
    IdempotencyKey,
    LogRow,
    NewExecution,
    NewRecord,
    QueueStore,
    Recorder,
    Row,
    RunEnd,
    RunStart,
    Store,
    WorkerStore,
)

__all__ = [
    "ApiStore",
    "Checkpoint",
    "Claim",
    "EntitySave",
    "EntityStore",
    "Event",
    "EventStore",
    "GenericSave",
    "IdempotencyKey",
    "LogRow",
    "NewExecution",
    "NewRecord",
    "QueueStore",
    "Recorder",
    "Row",
    "RunEnd",
    "RunStart",
    "Store",
    "WorkerStore",
    "new_execution_id",
    "new_log_id",
    "open_store",
]
logger = logging.getLogger(__name__)

BACKENDS = {
    "sqlite": "database.sqlite:SqliteStore",
    "postgresql": "database.postgres:PostgresStore",
    "postgres": "database.postgres:PostgresStore",
}
"""URL scheme (before any `+driver`) → the SQL store class, imported on first use."""


async def open_store(url: str, *, create: bool = True) -> Store:
    """Connect and (by default) create every missing table; existing tables are left as they
    are. `memory:` opens a fresh in-memory store, `memory://<name>` the process's one of that
    name. Raises ValueError for any other scheme."""
    scheme = url.partition(":")[0].partition("+")[0].lower()
    if scheme == "memory":
        from database.memory import open_memory_store

        return open_memory_store(url.partition(":")[2].lstrip("/"))
    if scheme not in BACKENDS:
        raise ValueError(
            f"Unsupported DATABASE_URL scheme {scheme!r} (use sqlite, postgresql or memory)"
        )
    module, _, name = BACKENDS[scheme].partition(":")
    backend = getattr(importlib.import_module(module), name)
    store: Store = await backend.open(url, create=create)
    return store
