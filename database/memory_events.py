"""The in-memory store's events (part of `MemoryStore`): appended by each change as it is made,
with ids 1, 2, … in order."""

import bisect

from database.events import Counts, Draft, event_row, to_event
from database.interfaces import Event, Row
from jsonutil import now_iso


class MemoryEvents:
    """`EventStore` in a list; the store supplies its `executions` and `runs` rows."""

    events: list[Event]
    _event_floor = 0
    """The highest id of events retention deleted (ids are never reused)."""
    executions: dict[str, Row]
    runs: dict[str, Row]

    def _publish(self, execution_id: str, drafts: list[Draft]) -> None:
        """Append the events of a change just made to `execution_id`'s rows."""
        row, now = self.executions[execution_id], now_iso()
        counts = Counts.of(self.runs.get(execution_id) or {})
        for draft in drafts:
            stored = event_row(
                draft,
                execution_id=execution_id,
                workflow_id=row["workflowId"],
                organization_id=row["organizationId"],
                counts=counts,
                now=now,
            )
            last = self.events[-1].id if self.events else self._event_floor
            self.events.append(to_event(last + 1, stored))

    async def events_after(
        self, after: int, *, execution_id: str | None = None, limit: int = 500
    ) -> list[Event]:
        found: list[Event] = []
        start = bisect.bisect_right(self.events, after, key=lambda e: e.id)
        for event in self.events[start:]:
            if len(found) >= limit:
                break
            if execution_id is None or event.execution_id == execution_id:
                found.append(event)
        return found

    async def last_event_id(self) -> int:
        return self.events[-1].id if self.events else self._event_floor
