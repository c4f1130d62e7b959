"""The tables: the Node backend's (created only when missing, never altered) and the service's own.

One SQLAlchemy Core schema serves SQLite and PostgreSQL. `create_all` is idempotent DDL applied at
start-up; it also adds the service's indexes to tables the Node backend created first.
"""

from typing import Any

import sqlalchemy as sa

from database.interfaces import EXECUTION_COLUMNS
from states import ExecutionStatus

metadata = sa.MetaData()
T = sa.Text


def _table(name: str, *columns: Any) -> sa.Table:
    return sa.Table(name, metadata, *columns)


def _pk() -> sa.Column[str]:
    return sa.Column("id", T, primary_key=True)


# The Node backend's tables (node_schema.sql). Decision 11: no foreign keys from
# workflow_executions to workflows/organizations, so inline workflows can be stored.
organizations = _table(
    "organizations",
    _pk(),
    sa.Column("name", T, nullable=False),
    sa.Column("createdAt", T),
    sa.Column("subscriptionPlan", T, server_default="free"),
    sa.Column("stripeCustomerId", T),
    sa.Column("stripeSubscriptionId", T),
    sa.Column("subscriptionStatus", T, server_default="active"),
    *(
        sa.Column(c, T)
        for c in (
            "subscriptionCurrentPeriodEnd",
            "industry",
            "employees",
            "website",
            "linkedinUrl",
            "headquarters",
            "foundingYear",
            "overview",
            "slackBotToken",
            "slackTeamId",
            "slackTeamName",
            "slackConnectedAt",
            "logo",
        )
    ),
    sa.Column("aiAuditMode", sa.Integer, server_default="0"),
)
entities = _table(
    "entities",
    _pk(),
    sa.Column("organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE")),
    sa.Column("name", T),
    sa.Column("description", T),
    sa.Column("author", T),
    sa.Column("lastEdited", T),
    sa.Column("entityType", T, server_default="generic"),
)
properties = _table(
    "properties",
    _pk(),
    sa.Column("entityId", T, sa.ForeignKey("entities.id", ondelete="CASCADE")),
    *(
        sa.Column(c, T)
        for c in ("name", "type", "defaultValue", "relatedEntityId", "unit", "formula")
    ),
)
records = _table(
    "records",
    _pk(),
    sa.Column("entityId", T, sa.ForeignKey("entities.id", ondelete="CASCADE")),
    sa.Column("createdAt", T),
    sa.Column("tags", T, server_default="[]"),
)
record_values = _table(
    "record_values",
    _pk(),
    sa.Column("recordId", T, sa.ForeignKey("records.id", ondelete="CASCADE")),
    sa.Column("propertyId", T, sa.ForeignKey("properties.id", ondelete="CASCADE")),
    sa.Column("value", T),
)
workflows = _table(
    "workflows",
    _pk(),
    sa.Column("organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE")),
    sa.Column("name", T, nullable=False),
    sa.Column("data", T, nullable=False),
    *(
        sa.Column(c, T)
        for c in (
            "tags",
            "createdAt",
            "updatedAt",
            "createdBy",
            "createdByName",
            "lastEditedBy",
            "lastEditedByName",
            "publishedVersionId",
        )
    ),
    sa.Column("activeVersionNumber", sa.Integer),
    sa.Column("isPublic", sa.Integer, server_default="0"),
)
# workflow_executions: the columns of `EXECUTION_COLUMNS`, TEXT unless typed here
_EXECUTION_TYPED = {
    "id": _pk(),
    "workflowId": sa.Column("workflowId", T, nullable=False),
    "status": sa.Column("status", T, server_default=ExecutionStatus.PENDING.value),
    "triggerType": sa.Column("triggerType", T, server_default="manual"),
    "versionNumber": sa.Column("versionNumber", sa.Integer),
}
executions = _table(
    "workflow_executions",
    *(_EXECUTION_TYPED[c] if c in _EXECUTION_TYPED else sa.Column(c, T) for c in EXECUTION_COLUMNS),
)
logs = _table(
    "execution_logs",
    _pk(),
    sa.Column(
        "executionId",
        T,
        sa.ForeignKey("workflow_executions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    *(
        sa.Column(c, T)
        for c in ("nodeId", "nodeType", "nodeLabel", "status", "inputData", "outputData", "error")
    ),
    sa.Column("duration", sa.Integer),
    sa.Column("timestamp", T),
)
workflow_versions = _table(
    "workflow_versions",
    _pk(),
    sa.Column("workflowId", T, sa.ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "organizationId", T, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("version", sa.Integer, nullable=False),
    *(sa.Column(c, T) for c in ("name",)),
    sa.Column("data", T, nullable=False),
    *(sa.Column(c, T) for c in ("description", "createdBy", "createdByName", "createdAt")),
    sa.Column("isProduction", sa.Integer, server_default="0"),
    sa.Index("idx_wf_versions_workflow", "workflowId", "version"),
    sa.Index("idx_wf_versions_production", "workflowId", "isProduction"),
)
sa.Index("idx_wos_logs_execution", logs.c.executionId, logs.c.timestamp)

# The service's own state (Decision 8), keyed by execution id.
runs = _table(
    "wos_executions",
    sa.Column("executionId", T, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("workflowName", T),
    sa.Column("definition", T, nullable=False),
    sa.Column("requestedMode", T, nullable=False),
    sa.Column("mode", T),
    sa.Column("modeReason", T),
    sa.Column("state", T, nullable=False),
    sa.Column("leaseOwner", T),
    sa.Column("leaseExpiresAt", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("resumedAt", T),
    sa.Column("retryOf", T),
    sa.Column("flowRunId", T),
    sa.Column("totalNodes", sa.Integer),
    sa.Column("completedNodes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failedNodes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skippedNodes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("crashResumes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("createdAt", T, nullable=False),
    sa.Column("dataOrganizationId", T),
    sa.Column("callback", T),  # the execute body's callback {url, events} (JSON text)
    sa.Column("workflowVersion", sa.Integer),  # workflow_versions.version run; NULL: draft
    sa.Column("workflowHash", T),  # sha256 of the definition's canonical JSON (api/versions)
    sa.Index("idx_wos_executions_state", "state", "seq"),
    # the claim order (database/claim_order.py, database/sql_claims.py)
    sa.Column("priority", sa.Integer, nullable=False, server_default="1"),
    sa.Column("orgGroup", T, nullable=False, server_default=""),
    sa.Column("turn", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("idx_wos_executions_claim", "state", "priority", "turn", "seq"),
    sa.Index("idx_wos_executions_org_turn", "state", "priority", "orgGroup", "turn"),
    sa.Index("idx_wos_executions_aged", "state", "priority", "seq"),
)

events = sa.Table(
    "execution_events",
    metadata,
    # SQLite: an INTEGER PRIMARY KEY is the rowid; AUTOINCREMENT never reuses an id
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("executionId", T, nullable=False),
    sa.Column("workflowId", T),
    sa.Column("organizationId", T),
    sa.Column("type", T, nullable=False),
    sa.Column("createdAt", T, nullable=False),
    sa.Column("data", T, nullable=False),
    sa.Index("idx_execution_events_execution", "executionId", "id"),
    sqlite_autoincrement=True,
)
"""Execution events (`database.events`); `data` is the event's JSON without its `id`, which
the reads put in front."""

idempotency = _table(
    "wos_idempotency",
    sa.Column("key", T, primary_key=True),
    sa.Column("organizationId", T, primary_key=True, server_default=""),
    sa.Column("requestHash", T, nullable=False),
    sa.Column("executionId", T, nullable=False),
    sa.Column("expiresAt", sa.Float, nullable=False),
)

# The callbacks' outbox (`database.callbacks`): one row per (event, callback URL), and how far
# the dispatcher has read the events.
callback_deliveries = _table(
    "callback_deliveries",
    sa.Column("id", T, primary_key=True),  # the webhook-id, the same on every attempt
    sa.Column("eventId", sa.BigInteger, nullable=False),
    sa.Column("executionId", T, nullable=False),
    sa.Column("url", T, nullable=False),
    sa.Column("eventType", T, nullable=False),
    sa.Column("payload", T, nullable=False),
    sa.Column("status", T, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("createdAt", sa.Float, nullable=False),
    sa.Column("nextAttemptAt", sa.Float, nullable=False),
    sa.Column("lastError", T),
    sa.Column("deliveredAt", T),
    sa.Column("leaseOwner", T),
    sa.Column("leaseExpiresAt", sa.Float),
    sa.UniqueConstraint("eventId", "url", name="uq_callback_deliveries_event_url"),
    sa.Index("idx_callback_deliveries_due", "status", "nextAttemptAt"),
    sa.Index("idx_callback_deliveries_execution", "executionId", "eventId"),
)
workers = _table(
    "wos_workers",  # heartbeats of the worker processes, for GET /health/ready (database/probes)
    sa.Column("owner", T, primary_key=True),
    sa.Column("seenAt", sa.Float, nullable=False),
    sa.Column("prefect", T),  # the worker's last Prefect probe: "ok" or why not; NULL inline
)
callback_cursor = _table(
    "wos_callback_cursor",
    sa.Column("name", T, primary_key=True),
    sa.Column("eventId", sa.BigInteger, nullable=False),
)
leases = _table(
    "wos_leases",  # named leases: one process at a time does that job (database/retention)
    sa.Column("name", T, primary_key=True),
    sa.Column("owner", T, nullable=False),
    sa.Column("expiresAt", sa.Float, nullable=False),
)


def create_all(conn: sa.Connection) -> None:
    """Create every missing table and index; existing tables are left as they are, except the
    service's own `wos_executions`, which gains the columns it lacks."""
    metadata.create_all(conn, checkfirst=True)
    _add_missing_columns(conn, runs)
    # create_all skips the indexes of tables that already exist (the Node backend's)
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _add_missing_columns(conn: sa.Connection, table: sa.Table) -> None:
    """The service's own tables gain columns between releases: an existing table gets each
    missing one (`ALTER TABLE ... ADD COLUMN`, with its default)."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    quote = conn.dialect.identifier_preparer.format_table
    for column in table.columns:
        if column.name not in present:
            ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {quote(table)} ADD COLUMN {ddl}"))
