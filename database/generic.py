"""The entity-data rules every backend shares: which tables saveRecords may create and write
(contract §2.5: the generic `<tableName>` tables), and how fetchData folds record values into
records.

Pure: the node types validate a name before they touch the store, and every backend refuses the
same names and returns the same records.
"""

import re
from collections.abc import Iterable
from typing import Any

from database.interfaces import GenericSave, Row
from errors import EntityStoreError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DEFAULT_TABLE = "saved_records"
GENERIC_COLUMNS = (
    "id",
    "data",
    "workflowId",
    "executionId",
    "createdAt",
    "updatedAt",
    "organizationId",
)
ORG_COLUMN = "organizationId"
"""Added by issue 9; a table created before it is still used by runs without an org."""
RESERVED_PREFIXES = ("wos_", "sqlite_", "pg_")
SERVICE_TABLES = frozenset(
    {
        "organizations",
        "entities",
        "properties",
        "records",
        "record_values",
        "workflows",
        "workflow_executions",
        "execution_logs",
        "workflow_versions",
        "wos_executions",
        "wos_idempotency",
        "execution_events",
        "callback_deliveries",
        "wos_callback_cursor",
        "wos_workers",
        "wos_leases",
    }
)
"""Every table of `database.schema.metadata` (a test keeps the two equal)."""
# Tables the Node backend creates (server/db.js) beyond those in `database.schema`.
NODE_BACKEND_TABLES = frozenset(
    {
        "users",
        "user_organizations",
        "dashboards",
        "widgets",
        "simulations",
        "scenarios",
        "list_items",
        "pending_approvals",
        "node_feedback",
        "pending_invitations",
        "report_templates",
        "template_sections",
        "reports",
        "report_sections",
        "report_contexts",
        "report_comments",
        "ai_assistant_files",
        "knowledge_documents",
        "knowledge_document_chunks",
        "knowledge_folders",
        "dashboard_workflow_connections",
        "notifications",
        "notification_reads",
        "alert_configs",
        "copilot_chats",
        "audit_logs",
        "ot_alerts",
        "workflow_schedules",
    }
)


def refusal(table_name: str) -> str | None:
    """Why `table_name` may not be used as a generic saveRecords table (None = allowed)."""
    if not IDENTIFIER.match(table_name):
        return (
            "must start with a letter or _ and contain only letters, digits and _ "
            "(at most 63 characters)"
        )
    lowered = table_name.lower()
    if (
        lowered in SERVICE_TABLES
        or lowered in NODE_BACKEND_TABLES
        or lowered.startswith(RESERVED_PREFIXES)
    ):
        return "names a table of the Node backend or of this service"
    return None


def check_name(table_name: str) -> None:
    """Raise EntityStoreError when `refusal` refuses `table_name`."""
    if (reason := refusal(table_name)) is not None:
        raise EntityStoreError(f"Invalid table name {table_name!r}: it {reason}")


def check_columns(table_name: str, columns: Iterable[str], organization: str | None) -> None:
    """Raise EntityStoreError when an existing table lacks the saveRecords columns; a table
    without `organizationId` serves only runs without an organization."""
    missing = set(GENERIC_COLUMNS) - set(columns)
    if organization is None:
        missing.discard(ORG_COLUMN)
    if missing:
        raise EntityStoreError(
            f"Table {table_name!r} exists but is not a saveRecords table (it lacks "
            f"{', '.join(sorted(missing))})"
        )


def duplicate_id(table_name: str) -> EntityStoreError:
    return EntityStoreError(
        f"A record id already exists in table {table_name!r} (saveMode insert; use "
        f"saveMode upsert to update existing records)"
    )


def generic_row(save: GenericSave, record_id: str, data: str, *, with_org: bool = True) -> Row:
    """A new row of a generic table (`with_org`: the table has the organizationId column)."""
    row: Row = {
        "id": record_id,
        "data": data,
        "workflowId": save.workflow_id,
        "executionId": save.execution_id,
        "createdAt": save.now,
        "updatedAt": save.now,
    }
    if with_org:
        row[ORG_COLUMN] = save.organization_id
    return row


RecordValue = tuple[str, str | None, str | None, Any, str | None]
"""(record id, record createdAt, property id, value, property name or None if it is gone); a
record without values comes once with None for the last three."""


def fold_records(rows: Iterable[RecordValue]) -> list[Row]:
    """Records in the order of their first row, each `{id, createdAt, <property name>: value}`.
    A record's own `id` and `createdAt` win over properties of the same name; a value whose
    property no longer exists is keyed by its property id."""
    by_id: dict[str, Row] = {}
    for rid, created_at, prop_id, value, prop_name in rows:
        record = by_id.get(rid)
        if record is None:
            record = by_id[rid] = {"id": rid, "createdAt": created_at}
        key = prop_name if prop_name is not None else prop_id
        if key is not None and key not in ("id", "createdAt"):
            record[key] = value
    return list(by_id.values())
