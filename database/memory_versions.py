"""The in-memory store's workflow versions: the SQL stores' reads over a list of rows, and
test helpers that seed them as the Node backend would."""

import uuid
from typing import Any

from database.interfaces import VERSION_COLUMNS, Row


class MemoryVersions:
    """`ApiStore`'s version reads, mixed into `database.memory.MemoryStore`."""

    workflows: dict[str, Row]
    versions: list[Row]

    def put_version(
        self,
        workflow_id: str,
        version: int,
        data: str,
        *,
        organization_id: str,
        published: bool = False,
        **columns: Any,
    ) -> str:
        """Test helper: a `workflow_versions` row (more columns by name, e.g. `name`,
        `createdAt`); `published` also points the workflow's publishedVersionId at it. Returns
        its id."""
        version_id = columns.pop("id", None) or str(uuid.uuid4())
        row = dict.fromkeys(VERSION_COLUMNS) | columns
        row.update(
            id=version_id,
            workflowId=workflow_id,
            organizationId=organization_id,
            version=version,
            data=data,
        )
        self.versions.append(row)
        if published:
            self.publish(workflow_id, version_id)
        return version_id

    def publish(self, workflow_id: str, version_id: str | None) -> None:
        """Test helper: set the workflow's publishedVersionId, as the Node backend does."""
        self.workflows[workflow_id]["publishedVersionId"] = version_id

    def _versions_of(self, workflow_id: str) -> list[Row]:
        workflow = self.workflows.get(workflow_id) or {}
        published = workflow.get("publishedVersionId")
        rows = [
            {**r, "published": r["id"] == published}
            for r in self.versions
            if r["workflowId"] == workflow_id
        ]
        rows.sort(key=lambda r: (r["version"], r["createdAt"] or "", r["id"]), reverse=True)
        return rows

    async def list_versions(self, workflow_id: str, limit: int) -> list[Row]:
        rows = self._versions_of(workflow_id)[:limit]
        return [
            {k: v for k, v in r.items() if k != "data"} | {"size": len(r["data"])} for r in rows
        ]

    async def get_version(self, workflow_id: str, version: int) -> Row | None:
        return next((r for r in self._versions_of(workflow_id) if r["version"] == version), None)

    async def get_published_version(self, workflow_id: str) -> Row | None:
        return next((r for r in self._versions_of(workflow_id) if r["published"]), None)
